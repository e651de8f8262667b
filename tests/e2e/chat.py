"""A ready chat endpoint on a real platform, for the tests of every client that talks to
one (the `openai` client, the SDK, the CLI).

The version is registered as a job would register it (a LoRA adapter of the hub's tiny-chat,
its artifacts uploaded over the worker API): the fastest honest way to a registered chat
version (a fine-tune adds a minute); the endpoint's replica is a real worker process."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client
from modelfab.db.models import Tenant
from modelfab.hub.chat import chat_model_folder
from modelfab.server import Platform
from tests.llm.engine.conftest import build_adapter
from tests.registry_factories import complete, insert_running_job, upload_artifact

TEAM = "support"
FORMATS = {".json": "json", ".safetensors": "safetensors"}


def openai_client(platform: Platform, key: str) -> openai.OpenAI:
    """The unchanged `openai` client on the platform's `/v1` with `key`, without retries,
    so a test sees every answer as it came."""
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)


def team_key(platform: Platform, name: str = TEAM) -> str:
    """A new tenant `name` (created by the admin, rate limit far above what tests send); its
    member key."""
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    with admin:
        return admin.create_tenant(name, rate_limit_rps=1000).api_key


def register_adapter(
    platform: Platform,
    factory: sessionmaker[Session],
    folder: Path,
    name: str,
    tenant: str = TEAM,
) -> None:
    """Version 1 of chat model `name` of `tenant`: a LoRA adapter of the hub's tiny-chat
    (built in `folder`), registered as llm-finetune registers one."""
    base = chat_model_folder(platform.settings.hub_dir, "tiny-chat")
    adapter = build_adapter(base, folder / name, base_hub="tiny-chat")
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
    assert tenant_id is not None, f"create tenant {tenant} first"
    job_id, token = insert_running_job(factory, tenant_id)
    with httpx.Client(base_url=platform.url) as http:
        records = []
        for path in sorted(adapter.iterdir()):
            fmt = FORMATS.get(path.suffix, "text")
            resp = upload_artifact(http, job_id, token, path.name, path.read_bytes(), fmt)
            assert resp.status_code == 201, resp.text
            records.append(resp.json())
        model = {"name": name, "task": "chat", "artifacts": records, "base_model": "tiny-chat"}
        resp = complete(http, job_id, token, model=model)
        assert resp.status_code == 200, resp.text


def serve_chat(
    platform: Platform,
    factory: sessionmaker[Session],
    folder: Path,
    key: str,
    endpoint: str = "assistant",
) -> None:
    """Endpoint `endpoint` of the key's tenant (TEAM) on a new support-bot:1, once its
    replica is ready (a worker process with the engine loaded)."""
    register_adapter(platform, factory, folder, "support-bot")
    with Client(platform.url, key) as team:
        team.create_endpoint(endpoint, model="support-bot:1", cpus=1)
        team.wait_endpoint(endpoint, timeout_s=60)
