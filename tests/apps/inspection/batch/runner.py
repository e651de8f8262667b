"""`python -m tests.apps.inspection.batch.runner CONFIG.json`: run batch-inspection in this
process, as a worker would, so a test can SIGKILL it mid-run.

CONFIG: {"model_dir", "version_id", "params", "counter", "delay_s"}. Every ONNX run first
sleeps `delay_s` (so the test has time to kill it), then appends one line per image it
infers to the `counter` file (O_APPEND, so lines survive a SIGKILL), and the result is
printed as JSON at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from modelfab.apps.inspection.batch import job
from modelfab.recipes.batch_inspection import Params
from modelfab.serving.models import ModelFiles, load_model
from tests.apps.inspection.batch.factories import recording_context


class CountingModel:
    """A model whose `infer` is slowed down and counted; everything else is the model's."""

    def __init__(self, model: Any, counter: Path, delay_s: float) -> None:
        self._model = model
        self._counter = counter
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def infer(self, items: list[Any]) -> list[Any]:
        time.sleep(self._delay_s)
        out = self._model.infer(items)
        fd = os.open(self._counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"x\n" * len(items))
        finally:
            os.close(fd)
        return list(out)


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    model_dir = Path(config["model_dir"])
    files = ModelFiles(
        config["version_id"],
        model_dir / "model.onnx",
        json.loads((model_dir / "labels.json").read_text()),
    )

    def slow_load(files: ModelFiles, **options: Any) -> CountingModel:
        return CountingModel(
            load_model(files, **options), Path(config["counter"]), config["delay_s"]
        )

    job.load_model = slow_load  # type: ignore[assignment]  # the one seam a test needs here
    ctx = recording_context(model_dir.parent, {config["version_id"]: files})
    result = job.run(ctx, Params.model_validate(config["params"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
