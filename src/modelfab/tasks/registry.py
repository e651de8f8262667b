"""The task registry: task name -> `TaskSpec`. Built-in tasks are registered by
`modelfab.tasks` (one line each); plugins call `register_task` when imported (see
`modelfab.plugins`)."""

from __future__ import annotations

import logging
import threading

from modelfab.errors import InvalidRequest
from modelfab.tasks.base import TaskSpec

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_tasks: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add `spec` under its name and return it. Registering the same spec again is a
    no-op (plugins may be imported twice). Raises ValueError when another spec already
    has the name."""
    with _lock:
        known = _tasks.get(spec.name)
        if known is not None and known != spec:
            raise ValueError(f"task {spec.name!r} is already registered by another spec")
        _tasks[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Forget a task (tests that register their own clean up with it)."""
    with _lock:
        _tasks.pop(name, None)


def task_names() -> tuple[str, ...]:
    """Every registered task name, in registration order."""
    with _lock:
        return tuple(_tasks)


def get_task(name: str) -> TaskSpec:
    """The spec of task `name`.

    Raises:
        InvalidRequest: (param "task") naming the valid tasks when there is none.
    """
    with _lock:
        spec = _tasks.get(name)
    if spec is None:
        valid = ", ".join(repr(t) for t in task_names())
        raise InvalidRequest(f"unknown task {name!r}; use one of {valid}", param="task")
    return spec


def check_task(name: str) -> str:
    """`name` unchanged when it is a registered task. Raises InvalidRequest as `get_task`."""
    return get_task(name).name
