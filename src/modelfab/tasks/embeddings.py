"""The `embeddings` task: models that turn a text into one fixed-length vector.

Its models come from the hub (`modelfab.hub.embeddings`, registered by the `hub-register`
recipe), not from training, so no dataset has this task. A version is a sentence-transformers
encoder split into artifacts: `config.json` and `model.safetensors` (the encoder),
`tokenizer.json`, and `labels.json`, the model card that says how token states become one
vector (pooling, normalisation, the longest input, the dimensions).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from modelfab.data.validate import Survey, Tree
from modelfab.errors import DatasetInvalid
from modelfab.tasks.base import TaskSpec

NAME = "embeddings"
"""The task's name; import it rather than spelling the string."""

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, CARD_NAME = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "labels.json",
)
"""The artifacts a replica serves an embeddings version from."""


class Embedding(BaseModel):
    """One text's answer from an embeddings endpoint."""

    embedding: list[float] = Field(description="The text's vector (unit length if normalised).")
    tokens: int = Field(description="Tokens the model read, special tokens included.")


def survey(root: Path, tree: Tree) -> Survey:
    """Always refuses: embeddings models are taken from the hub, not trained on a dataset."""
    raise DatasetInvalid(
        "no dataset has task embeddings: its models come from the hub (run the hub-register "
        "recipe); upload this data under another task",
        param=".",
    )


SPEC = TaskSpec(
    name=NAME,
    description="Sentence embeddings: one vector per text (models from the hub).",
    layout="none: embeddings models are registered from the hub, not trained",
    surveyor=survey,
    result=Embedding,
    served_model="modelfab.serving.embeddings:EmbeddingModel",
    serving_artifacts=(CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME, CARD_NAME),
)
