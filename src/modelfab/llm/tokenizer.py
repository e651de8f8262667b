"""`ChatTokenizer`: a fast tokenizer (the `tokenizers` library) with the chat template and
special tokens of its model, read from and written to a Hugging Face folder.

Light on purpose (no torch, no transformers): the control plane counts tokens with it. A
folder it writes is also a valid transformers tokenizer folder (`AutoTokenizer` loads it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from modelfab.errors import ChatModelInvalid

logger = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)
"""What `ChatTokenizer.save` writes: all a folder needs for `load_tokenizer`."""

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML as SmolLM2's template writes it (a default system turn when none is given)."""


@dataclass(frozen=True, eq=False)
class ChatTokenizer:
    """A tokenizer and how its model expects a conversation to be written.

    Text is always encoded without the tokenizer's own added special tokens (no BOS from a
    post-processor): the chat template writes every special token a model needs, as
    transformers' `apply_chat_template` does.
    """

    backend: Tokenizer
    chat_template: str
    """A Jinja template over `messages` (and `add_generation_prompt`), as transformers runs it."""
    eos_token: str
    """Ends an assistant turn: generation stops on it."""
    pad_token: str
    bos_token: str | None = None
    unk_token: str | None = None
    model_max_length: int | None = None

    @property
    def eos_id(self) -> int:
        return self.token_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        return self.token_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        """Tokens including the added ones: the model's embedding needs at least this many."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int:
        """The id of `token`. Raises ChatModelInvalid when the vocabulary lacks it."""
        found = self.backend.token_to_id(token)
        if found is None:
            raise ChatModelInvalid(
                f"the tokenizer has no token {token!r}; fix its special tokens in "
                f"{TOKENIZER_CONFIG}",
                param="file",
            )
        return int(found)

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def special_tokens(self) -> dict[str, str]:
        """The named special tokens that are set."""
        named = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
        }
        return {k: v for k, v in named.items() if v is not None}

    def save(self, folder: Path) -> None:
        """Write TOKENIZER_FILES into `folder` (created if missing), transformers-compatible."""
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / TOKENIZER_JSON))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self.special_tokens(),
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": self.chat_template,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        _write_json(folder / TOKENIZER_CONFIG, config)
        _write_json(folder / SPECIAL_TOKENS_MAP, self.special_tokens())
        (folder / CHAT_TEMPLATE_FILE).write_text(self.chat_template)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, {} when absent. Raises ChatModelInvalid when unreadable."""
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ChatModelInvalid(f"{path.name} is not valid JSON ({exc})", param="file") from exc
    if not isinstance(obj, dict):
        raise ChatModelInvalid(f"{path.name} does not hold a JSON object", param="file")
    return obj


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer configs write it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def read_chat_template(folder: Path) -> str | None:
    """The chat template a Hugging Face folder carries, or None: `chat_template.jinja`, then
    `chat_template.json`, then `tokenizer_config.json` (a string, or the "default" of a list
    of named templates)."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    for name in (CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG):
        template = _read_json(folder / name).get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template.strip():
            return template
    return None


def load_tokenizer(folder: Path) -> ChatTokenizer:
    """The chat tokenizer saved in `folder` (a Hugging Face model or tokenizer folder).

    Reads `tokenizer.json` (fast tokenizers only), the special tokens of
    `tokenizer_config.json` / `special_tokens_map.json` (EOS falls back to the model's
    `generation_config.json` or `config.json`; PAD to EOS) and the chat template.

    Raises:
        ChatModelInvalid: (param "file") naming what is missing or unreadable.
    """
    path = folder / TOKENIZER_JSON
    if not path.is_file():
        hint = (
            " (it has a slow sentencepiece tokenizer only)"
            if (folder / "tokenizer.model").is_file()
            else ""
        )
        raise ChatModelInvalid(
            f"no {TOKENIZER_JSON} in the model folder{hint}; save the tokenizer with "
            "transformers (AutoTokenizer.from_pretrained(...).save_pretrained(folder)) and "
            "import the folder again",
            param="file",
        )
    template = read_chat_template(folder)
    if template is None:
        raise ChatModelInvalid(
            "the model has no chat template (chat_template.jinja, or chat_template in "
            f"{TOKENIZER_CONFIG}); add the template of its instruct version and import again",
            param="file",
        )
    backend = _read_backend(path)
    config = {**_read_json(folder / SPECIAL_TOKENS_MAP), **_read_json(folder / TOKENIZER_CONFIG)}
    tokens = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}
    eos = tokens["eos_token"] or _eos_from_model_config(folder, backend)
    if eos is None:
        raise ChatModelInvalid(
            f"the tokenizer names no end-of-sequence token; set eos_token in {TOKENIZER_CONFIG}",
            param="file",
        )
    max_length = config.get("model_max_length")
    out = ChatTokenizer(
        backend=backend,
        chat_template=template,
        eos_token=eos,
        pad_token=tokens["pad_token"] or eos,
        bos_token=tokens["bos_token"],
        unk_token=_token_text(config.get("unk_token")),
        model_max_length=max_length if isinstance(max_length, int) and max_length < 2**31 else None,
    )
    for token in (out.eos_token, out.pad_token):
        out.token_id(token)  # raises when the vocabulary lacks it
    return out


def _read_backend(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions for any format error
        raise ChatModelInvalid(
            f"{TOKENIZER_JSON} cannot be read by the tokenizers library ({exc})", param="file"
        ) from exc


def _eos_from_model_config(folder: Path, backend: Tokenizer) -> str | None:
    for name in ("generation_config.json", "config.json"):
        eos_id = _read_json(folder / name).get("eos_token_id")
        if isinstance(eos_id, list) and eos_id:
            eos_id = eos_id[0]
        if isinstance(eos_id, int) and (token := backend.id_to_token(eos_id)) is not None:
            return str(token)
    return None


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte 0..255, in byte order (what byte-level BPE
    vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return tuple(mapping[b] for b in range(256))


def tiny_tokenizer() -> ChatTokenizer:
    """A byte-level tokenizer for tests and smoke runs: ids 0-2 are `<|endoftext|>`,
    `<|im_start|>`, `<|im_end|>` (as in SmolLM2), 3-258 the 256 bytes; no merges, so any
    text encodes (one token per byte) and decodes back exactly. ChatML template; EOS and
    PAD are `<|im_end|>`. Deterministic and instant."""
    specials = (END_OF_TEXT, IM_START, IM_END)
    vocab = {tok: i for i, tok in enumerate((*specials, *_byte_alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return ChatTokenizer(
        backend=backend,
        chat_template=CHATML_TEMPLATE,
        eos_token=IM_END,
        pad_token=IM_END,
        bos_token=IM_START,
        unk_token=END_OF_TEXT,
        model_max_length=2048,
    )
