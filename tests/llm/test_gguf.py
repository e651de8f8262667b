"""Reading GGUF headers without torch: metadata, sizes, the tokenizer; hostile headers are
refused without reading further."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from modelfab.errors import ChatModelInvalid
from modelfab.llm.gguf import gguf_tokenizer, is_gguf, read_gguf
from modelfab.llm.tokenizer import tiny_tokenizer
from tests.llm.files import write_tiny_gguf


def test_header_and_tokenizer(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    assert is_gguf(path)
    info = read_gguf(path)
    assert (info.architecture, info.context_length, info.tensor_count) == ("llama", 2048, 1)
    assert info.parameters == 259 * 16
    assert info.chat_template == tiny_tokenizer().chat_template
    tok = gguf_tokenizer(info)
    reference = tiny_tokenizer()
    text = "<|im_start|>user\nhé, 12 €<|im_end|>\n"
    assert tok.encode(text) == reference.encode(text)
    assert (tok.eos_token, tok.pad_token, tok.model_max_length) == (
        "<|im_end|>",
        "<|im_end|>",
        2048,
    )


def _header(*kv: bytes, tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, len(kv)) + b"".join(kv)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (_header(tensors=2**40), "too many tensors"),
        (_header(_key("a") + struct.pack("<IIQ", 9, 8, 2**40)), "an array of"),
        (_header(_key("a") + struct.pack("<IQ", 8, 2**40)), "a string of"),
        (_header(_key("a") + struct.pack("<I", 77)), "unknown metadata value type 77"),
        (_header(_key("a") + struct.pack("<I", 4)), "truncated"),
        (_header(), "general.architecture is missing"),
    ],
)
def test_hostile_headers_are_refused(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ChatModelInvalid, match=says) as err:
        read_gguf(path)
    assert err.value.param == "file"


def test_reading_a_gguf_tokenizer_needs_no_torch(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from modelfab.llm.gguf import gguf_tokenizer, read_gguf\n"
        f"tok = gguf_tokenizer(read_gguf(Path({str(path)!r})))\n"
        "assert tok.vocab_size == 259\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
