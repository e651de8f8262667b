"""A toy task defined outside the package, as a plugin: text classification by word counts.

Importing this module registers all of it (that is what `MODELFAB_PLUGINS` does in every
process): the task `toy-text` (datasets: <label>/<text>.txt), the recipe `toy-text-train`
(counts each label's words, registers words.json) and the served-model kind
`ToyTextModel` (answers the label whose words a text shares most, and the text's length).
No other module of modelfab is touched to add it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from modelfab.data.validate import Survey, Tree, children, hash_files, require_suffixes
from modelfab.errors import DatasetInvalid
from modelfab.recipes.base import RecipeContext, RecipeSpec, register_recipe
from modelfab.serving.inputs import decode_text
from modelfab.serving.protocol import LoadOptions, ModelFiles
from modelfab.tasks import TaskSpec, register_task

logger = logging.getLogger(__name__)

NAME = "toy-text"
RECIPE_NAME = "toy-text-train"
WORDS = "words.json"
TEXT_SUFFIXES = frozenset({".txt"})


# --------------------------------------------------------------------------- the task


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()").lower() for w in text.split() if w.strip(".,;:!?\"'()")]


def survey(root: Path, tree: Tree) -> Survey:
    """<label>/<name>.txt, two labels or more, UTF-8; stats: texts per label, words."""
    direct, groups, deeper = children(tree, "")
    if direct or deeper:
        bad = (direct or deeper)[0]
        raise DatasetInvalid(f"{bad}: texts belong in <label>/<name>.txt", param=bad)
    require_suffixes(tree.files, TEXT_SUFFIXES, "a text file")
    if len(groups) < 2:
        raise DatasetInvalid("toy-text needs two label folders or more", param=".")
    entries = hash_files(root, tree.files)
    words = 0
    for rel in tree.files:
        try:
            words += len(_words((root / rel).read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise DatasetInvalid(f"{rel} is not UTF-8 text; re-save it", param=rel) from exc
    stats = {
        "task": NAME,
        "labels": {folder: len(rels) for folder, rels in sorted(groups.items())},
        "num_texts": len(tree.files),
        "num_words": words,
    }
    return Survey(entries=entries, stats=stats)


class ToyTextResult(BaseModel):
    label: str = Field(description="The label whose words the text shares most.")
    length: int = Field(description="The text's length in characters.")


SPEC = TaskSpec(
    name=NAME,
    description="Toy: label texts by word counts.",
    layout="<label>/<name>.txt",
    surveyor=survey,
    result=ToyTextResult,
    served_model=f"{__name__}:ToyTextModel",
    serving_artifacts=(WORDS,),
)


# --------------------------------------------------------------------------- the kind


class ToyTextModel:
    """The served-model kind of `toy-text`: a `ServedModel` that `DecodesInput` (text)."""

    task = NAME

    def __init__(self, version_id: str, counts: dict[str, dict[str, int]], size: int) -> None:
        self.version_id = version_id
        self.counts = counts
        self.size_bytes = size
        self.max_batch_size = 16

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> ToyTextModel:
        path = files.path(WORDS)
        return cls(files.version_id, json.loads(path.read_text()), path.stat().st_size)

    def decode(self, name: str, data: bytes) -> str:
        return decode_text(name, data)

    def prepare(self, item: str) -> tuple[int, list[str]]:
        return len(item), _words(item)

    def infer(self, items: Sequence[tuple[int, list[str]]]) -> list[tuple[int, str]]:
        def best(words: list[str]) -> str:
            scores = {label: sum(c.get(w, 0) for w in words) for label, c in self.counts.items()}
            return max(sorted(scores), key=lambda label: scores[label])

        return [(length, best(words)) for length, words in items]

    def result(self, raw: tuple[int, str], options: Mapping[str, str]) -> dict[str, Any]:
        return {"label": raw[1], "length": raw[0]}


# --------------------------------------------------------------------------- the recipe


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    model_name: str = Field(default="toy", description="The registered model's name.")


def train(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Count each label's words and register them as the model."""
    assert ctx.dataset_path is not None
    counts: dict[str, Counter[str]] = {}
    for path in sorted(ctx.dataset_path.glob("*/*.txt")):
        counts.setdefault(path.parent.name, Counter()).update(_words(path.read_text()))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    out = ctx.workdir / WORDS
    out.write_text(json.dumps({label: dict(c) for label, c in counts.items()}))
    artifact = ctx.upload_artifact(out, name=WORDS, format="json")
    ctx.register_model(
        {
            "name": params.model_name,
            "task": NAME,
            "artifacts": [artifact],
            "metrics": {"labels": len(counts)},
        }
    )
    return {"labels": sorted(counts)}


RECIPE = RecipeSpec(
    name=RECIPE_NAME,
    version="1",
    description="Toy: count each label's words.",
    params=Params,
    entrypoint=f"{__name__}:train",
    needs_dataset=True,
    tasks=(NAME,),
)

register_task(SPEC)
register_recipe(RECIPE_NAME, __name__)
