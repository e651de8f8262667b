"""What a GGUF file says about its model, read without torch: the metadata, the tensor
count and size, and its tokenizer with the chat template.

The control plane checks an imported GGUF with `read_gguf` and `gguf_tokenizer`; the
weights are dequantised later, in a worker (`modelfab.llm.models.convert_gguf`).

The reader parses the header only (format versions 2 and 3) and refuses anything out of
bounds, so a hostile file costs at most its header's worth of reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO, Any

from modelfab.errors import ChatModelInvalid
from modelfab.llm.tokenizer import ChatTokenizer

MAGIC = b"GGUF"
SUFFIX = ".gguf"
_VERSIONS = (2, 3)
_MAX_STRING = 64 * 2**20
_MAX_ITEMS = 16 * 2**20
_MAX_DIMS = 8

# GGUF value types: the fixed-width ones by struct format; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufInfo:
    """The header of a GGUF file."""

    path: Path
    metadata: dict[str, Any]
    """Every key-value pair, arrays as lists."""
    tensor_count: int
    parameters: int
    """Elements of all tensors together."""

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None


def is_gguf(path: Path) -> bool:
    """Whether `path` starts with the GGUF magic bytes."""
    with path.open("rb") as fh:
        return fh.read(4) == MAGIC


def read_gguf(path: Path) -> GgufInfo:
    """The header of the GGUF file `path`.

    Raises:
        ChatModelInvalid: (param "file") it is not a GGUF file of version 2 or 3, it is
            truncated, or a count or length in it is out of bounds.
    """
    try:
        with path.open("rb") as fh:
            return _read(fh, path)
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ChatModelInvalid(
            f"{path.name} is not a readable GGUF file ({exc}); export it again with llama.cpp "
            "(convert_hf_to_gguf.py) or import the Hugging Face folder instead",
            param="file",
        ) from exc


def _read(fh: IO[bytes], path: Path) -> GgufInfo:
    if fh.read(4) != MAGIC:
        raise ValueError("it does not start with the GGUF magic bytes")
    (version,) = _unpack(fh, "<I")
    if version not in _VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported (only 2 and 3)")
    tensor_count, kv_count = _unpack(fh, "<QQ")
    if tensor_count > _MAX_ITEMS or kv_count > _MAX_ITEMS:
        raise ValueError("too many tensors or metadata entries")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = _string(fh)
        (kind,) = _unpack(fh, "<I")
        metadata[key] = _value(fh, kind)
    parameters = 0
    for _ in range(tensor_count):
        _string(fh)
        (n_dims,) = _unpack(fh, "<I")
        if n_dims > _MAX_DIMS:
            raise ValueError(f"a tensor has {n_dims} dimensions")
        dims = _unpack(fh, f"<{n_dims}Q")
        _unpack(fh, "<IQ")  # ggml type, data offset
        parameters += prod(dims)
    if not metadata.get("general.architecture"):
        raise ValueError("general.architecture is missing")
    return GgufInfo(path=path, metadata=metadata, tensor_count=tensor_count, parameters=parameters)


def _unpack(fh: IO[bytes], fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its header (truncated?)")
    return struct.unpack(fmt, data)


def _string(fh: IO[bytes]) -> str:
    (length,) = _unpack(fh, "<Q")
    if length > _MAX_STRING:
        raise ValueError(f"a string of {length} bytes")
    data = fh.read(length)
    if len(data) != length:
        raise ValueError("the file ends inside its header (truncated?)")
    return data.decode("utf-8")


def _value(fh: IO[bytes], kind: int) -> Any:
    if kind in _SCALARS:
        return _unpack(fh, _SCALARS[kind])[0]
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item_kind, count = _unpack(fh, "<IQ")
        if count > _MAX_ITEMS or item_kind == _ARRAY:
            raise ValueError(f"an array of {count} items of type {item_kind}")
        if item_kind in _SCALARS:
            fmt = _SCALARS[item_kind]
            return list(_unpack(fh, f"<{count}{fmt[1:]}"))
        return [_value(fh, item_kind) for _ in range(count)]
    raise ValueError(f"unknown metadata value type {kind}")


# GGUF tokenizer keys -> the names transformers' GGUF tokenizer builders take.
_TOKENIZER_KEYS = {
    "tokenizer.ggml.model": "tokenizer_type",
    "tokenizer.ggml.pre": "pre_tokenizer_type",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.precompiled_charsmap": "precompiled_charsmap",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}


def gguf_tokenizer(info: GgufInfo) -> ChatTokenizer:
    """The tokenizer and chat template a GGUF file carries, built as transformers builds it
    when it loads the file (so training, serving and the conversion agree).

    Imports transformers' tokenizer builders (a few seconds the first time; no torch).

    Raises:
        ChatModelInvalid: (param "file") no chat template, no vocabulary or EOS token, or a
            tokenizer kind transformers cannot build.
    """
    meta = info.metadata
    template = info.chat_template
    if template is None:
        raise ChatModelInvalid(
            f"{info.path.name} carries no chat template (tokenizer.chat_template): export the "
            "instruct (chat) version of the model, or import its Hugging Face folder with a "
            "chat template added",
            param="file",
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    if not isinstance(tokens, list) or not tokens or not isinstance(eos_id, int):
        raise ChatModelInvalid(
            f"{info.path.name} carries no tokenizer vocabulary or EOS token id", param="file"
        )
    backend = _build_backend(
        info, {name: meta[k] for k, name in _TOKENIZER_KEYS.items() if k in meta}
    )

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return str(tokens[index]) if isinstance(index, int) and 0 <= index < len(tokens) else None

    eos = token("eos_token_id")
    assert eos is not None  # eos_id was checked above
    return ChatTokenizer(
        backend=backend,
        chat_template=template,
        eos_token=eos,
        pad_token=token("padding_token_id") or eos,
        bos_token=token("bos_token_id"),
        unk_token=token("unknown_token_id"),
        model_max_length=info.context_length,
    )


def _build_backend(info: GgufInfo, tokenizer_dict: dict[str, Any]) -> Any:
    # transformers' builders are the reference for GGUF vocabularies; importing them loads
    # no torch (checked by tests/llm/test_gguf.py).
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    try:
        backend, _ = convert_gguf_tokenizer(info.architecture, tokenizer_dict)
    except (ValueError, KeyError, TypeError) as exc:
        raise ChatModelInvalid(
            f"the tokenizer of {info.path.name} cannot be built ({exc}); import the model's "
            "Hugging Face folder instead",
            param="file",
        ) from exc
    return backend
