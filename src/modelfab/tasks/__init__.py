"""Task types as a registry: one `TaskSpec` per task, one module per task.

Adding a task is a new module defining its `SPEC` plus one `register_task` line below (or,
outside the package, a plugin module that calls `register_task` when imported: see
`modelfab.plugins`). Nothing else names a task string: other modules import a task's
`NAME` or ask the registry.

This package sits above `modelfab.data` (it builds its layouts from `data.validate`'s
helpers) and below `services`, `recipes`, `hub` and the replica side of `serving`.
"""

from modelfab.tasks import anomaly_detection, chat, embeddings, image_classification, images
from modelfab.tasks.base import TaskSpec
from modelfab.tasks.registry import (
    check_task,
    get_task,
    register_task,
    task_names,
    unregister_task,
)

IMAGE_CLASSIFICATION = image_classification.NAME
ANOMALY_DETECTION = anomaly_detection.NAME
CHAT = chat.NAME
IMAGES = images.NAME
EMBEDDINGS = embeddings.NAME

register_task(image_classification.SPEC)
register_task(anomaly_detection.SPEC)
register_task(chat.SPEC)
register_task(images.SPEC)
register_task(embeddings.SPEC)

__all__ = [
    "ANOMALY_DETECTION",
    "CHAT",
    "EMBEDDINGS",
    "IMAGES",
    "IMAGE_CLASSIFICATION",
    "TaskSpec",
    "check_task",
    "get_task",
    "register_task",
    "task_names",
    "unregister_task",
]
