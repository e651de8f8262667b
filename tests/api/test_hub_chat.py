"""Importing chat models into the hub through the API: a Hugging Face folder (as a tar) or a
GGUF under a new name, checked at once; bad inputs refused naming the problem."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from modelfab.hub.chat import chat_model_folder, chat_tokenizer_folder
from modelfab.llm.encoding import count_tokens
from modelfab.llm.models import tiny_chat_model
from modelfab.llm.tokenizer import load_tokenizer
from modelfab.settings import ServerSettings
from tests.api.test_hub import hub
from tests.conftest import Api
from tests.llm.files import write_tiny_gguf


def tar_of(folder: Path, top: str = "model") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=top)
    return buf.getvalue()


def import_chat(api: Api, name: str, content: bytes, filename: str, key: str | None = None) -> Any:
    files = {"file": (filename, content, "application/octet-stream")}
    return api.call(
        "POST", f"/hub/{name}/import", key or api.admin_key, params={"task": "chat"}, files=files
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=1)


def broken_copy(tiny_folder: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_folder, folder)
    return folder


def test_import_a_folder_then_list_and_load_it(
    api: Api, settings: ServerSettings, tiny_folder: Path
) -> None:
    content = tar_of(tiny_folder)
    resp = import_chat(api, "support-base", content, "support-base.tar")
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert (out["id"], out["task"], out["source"], out["arch"]) == (
        "support-base", "chat", "import", "LlamaForCausalLM",
    )  # fmt: skip
    assert (out["available"], out["context_length"], out["created"]) == (True, 2048, True)
    assert out["imported"]["format"] == "hf"
    assert out["how"] == f"imported hf {out['imported']['sha256'][:12]}"

    member = str(api.create_tenant()["api_key"])
    listed = hub(api, member)["support-base"]
    assert listed["available"] is True and listed["params_m"] == pytest.approx(0.1, abs=0.05)

    folder = settings.hub_dir / "support-base"
    assert {p.name for p in folder.iterdir()} == {"meta.json", "model", "tokenizer"}
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["task"], meta["format"], meta["original_filename"]) == (
        "chat", "hf", "support-base.tar",
    )  # fmt: skip
    assert chat_model_folder(settings.hub_dir, "support-base") == folder / "model"
    tok = load_tokenizer(chat_tokenizer_folder(settings.hub_dir, "support-base"))
    assert tok.model_max_length == 2048
    assert count_tokens(tok, [{"role": "user", "content": "hi"}]) > 2
    assert not [p for p in settings.hub_dir.iterdir() if p.name.startswith(".tmp-")]

    again = import_chat(api, "support-base", content, "again.tar")
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["imported"] == out["imported"]


def test_other_content_under_a_taken_name_is_refused(
    api: Api, settings: ServerSettings, tiny_folder: Path, tmp_path: Path
) -> None:
    assert import_chat(api, "base", tar_of(tiny_folder), "a.tar").status_code == 201
    other = tiny_chat_model(tmp_path / "other", seed=2)
    resp = import_chat(api, "base", tar_of(other), "b.tar")
    assert resp.status_code == 409, resp.text
    assert (resp.json()["error"]["code"], resp.json()["error"]["param"]) == (
        "hub_name_taken", "model_id",
    )  # fmt: skip
    meta = json.loads((settings.hub_dir / "base" / "meta.json").read_text())
    assert meta["original_filename"] == "a.tar"


def test_import_a_gguf(api: Api, settings: ServerSettings, tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    resp = import_chat(api, "tiny-gguf", gguf, "tiny.gguf")
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert (out["arch"], out["context_length"], out["imported"]["format"]) == (
        "llama", 2048, "gguf",
    )  # fmt: skip
    assert out["how"].endswith("; converted to safetensors on first use")
    folder = settings.hub_dir / "tiny-gguf"
    assert (folder / "source.gguf").read_bytes() == gguf
    tok = load_tokenizer(chat_tokenizer_folder(settings.hub_dir, "tiny-gguf"))
    assert tok.encode("<|im_end|>") == [tok.eos_id]


@pytest.mark.parametrize(
    ("name", "status", "code", "param"),
    [
        ("resnet18", 409, "hub_name_taken", "model_id"),  # a vision catalog id
        ("smollm2-135m-instruct", 409, "hub_name_taken", "model_id"),
        ("Bad Name", 422, "invalid_request", "model_id"),
    ],
)
def test_names_a_chat_import_cannot_take(
    api: Api, tiny_folder: Path, name: str, status: int, code: str, param: str
) -> None:
    resp = import_chat(api, name, tar_of(tiny_folder), "m.tar")
    assert resp.status_code == status, resp.text
    assert (resp.json()["error"]["code"], resp.json()["error"]["param"]) == (code, param)


def test_chat_import_is_for_admins_and_only_chat_takes_new_names(
    api: Api, tiny_folder: Path
) -> None:
    member = str(api.create_tenant()["api_key"])
    assert import_chat(api, "x", tar_of(tiny_folder), "m.tar", key=member).status_code == 403
    files = {"file": ("m.tar", tar_of(tiny_folder), "application/octet-stream")}
    wrong = api.call(
        "POST", "/hub/resnet18/import", api.admin_key,
        params={"task": "anomaly-detection"}, files=files,
    )  # fmt: skip
    assert wrong.status_code == 422 and wrong.json()["error"]["param"] == "task"


def _not_causal(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (folder / "config.json").write_text(json.dumps(config))


def _no_template(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _pickled(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _no_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def _bad_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _adapter_only(folder: Path) -> None:
    (folder / "config.json").rename(folder / "adapter_config.json")


@pytest.mark.parametrize(
    ("breaks", "says"),
    [
        (_not_causal, "not a causal language model"),
        (_no_template, "no chat template"),
        (_pickled, "pickled PyTorch files"),
        (_no_tokenizer, "no tokenizer.json"),
        (_bad_config, "config.json is not valid JSON"),
        (_adapter_only, "LoRA adapter"),
    ],
)
def test_a_folder_that_is_not_a_chat_model_is_refused(
    api: Api,
    settings: ServerSettings,
    tiny_folder: Path,
    tmp_path: Path,
    breaks: Any,
    says: str,
) -> None:
    folder = broken_copy(tiny_folder, tmp_path, "broken")
    breaks(folder)
    resp = import_chat(api, "broken", tar_of(folder), "broken.tar")
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("chat_model_invalid", "file")
    assert says in error["message"]
    assert not settings.hub_dir.exists() or not list(settings.hub_dir.iterdir())


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.read_bytes()[:100], "not a readable GGUF file"),
        (lambda p: write_tiny_gguf(p, chat_template=False).read_bytes(), "no chat template"),
        (lambda p: b"just some bytes, not a model" * 10, "neither a GGUF file nor an archive"),
        (lambda p: b"GGUF" + b"\xff" * 40, "GGUF version"),
    ],
)
def test_a_file_that_is_not_a_usable_gguf_is_refused(
    api: Api, settings: ServerSettings, tmp_path: Path, make: Any, says: str
) -> None:
    content = make(write_tiny_gguf(tmp_path / "m.gguf"))
    resp = import_chat(api, "bad-gguf", content, "m.gguf")
    assert resp.status_code == 422, resp.text
    assert says in resp.json()["error"]["message"]
    assert resp.json()["error"]["param"] == "file"
    assert not settings.hub_dir.exists() or not list(settings.hub_dir.iterdir())


def test_an_empty_upload_is_refused(api: Api) -> None:
    resp = import_chat(api, "empty", b"", "m.gguf")
    assert resp.status_code == 422 and "empty" in resp.json()["error"]["message"]
