"""`modelfab up`: the control plane in one process — the API, the scheduler loop, and the
local executor. `Platform.start()` / `stop()` are public so tests run it in-process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from modelfab import httpd
from modelfab.api.app import create_app
from modelfab.api.context import AppContext
from modelfab.artifacts import ArtifactStore
from modelfab.compute.executors.base import Executor
from modelfab.compute.executors.local import LocalExecutor
from modelfab.compute.pool import NodeSpec, detect_node, register_node
from modelfab.compute.scheduler.loop import Scheduler, SchedulerConfig
from modelfab.data import DatasetStore
from modelfab.data.store import sweep_staging
from modelfab.db import migrate
from modelfab.db.engine import make_engine, make_sessionmaker
from modelfab.errors import ModelfabError
from modelfab.gateway import EndpointDeleter, Gateway
from modelfab.hub.chat import sweep_hub_staging
from modelfab.plugins import PLUGINS_ENV, load_plugins
from modelfab.services.auth import bootstrap_admin, gateway_caller
from modelfab.services.chat_tokens import HubTokenCounts
from modelfab.services.datasets import DatasetService
from modelfab.services.endpoint_controller import EndpointController
from modelfab.services.endpoints import EndpointService
from modelfab.services.files import FileService
from modelfab.services.fine_tuning import FineTuningService
from modelfab.services.jobs import JobService
from modelfab.services.keys import KeyService
from modelfab.services.registry import RegistryService
from modelfab.services.worker import WorkerService
from modelfab.settings import ServerSettings
from modelfab.tasks import chat
from modelfab.usage_journal import UsageJournal

logger = logging.getLogger(__name__)


SWEEP_INTERVAL_S = 600.0
"""How often a running platform removes staging leftovers (`ServerSettings.staging_grace_s`)."""


@dataclass
class Started:
    url: str
    admin_key: str | None  # only on the very first start of a home


class Platform:
    def __init__(self, settings: ServerSettings):
        load_plugins(settings.plugins)  # before anything reads the task or recipe registry
        self.settings = settings
        self.engine: Engine | None = None
        self.node: NodeSpec | None = None
        self.scheduler: Scheduler | None = None
        self.executor: LocalExecutor | None = None
        self.journal: UsageJournal | None = None
        self.controller: EndpointController | None = None
        self.app: FastAPI | None = None
        self.datasets: DatasetService | None = None
        self.url = ""
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def setup(self) -> Started:
        """Migrate, register the node, re-adopt running work, build the app. Binds the port
        first: raises ModelfabError code "port_unavailable" (param "port") when it cannot."""
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        self._sock = _bind(s.host, s.port)
        self._sock.set_inheritable(True)
        port = self._sock.getsockname()[1]
        self.settings = s = s.model_copy(update={"port": port})
        self.url = s.api_url
        self.engine = make_engine(s.url)
        migrate.upgrade(self.engine)
        factory = make_sessionmaker(self.engine)
        self.node = detect_node(s.home, fake_gpus=s.fake_gpus, cpus=s.cpus)
        register_node(factory, self.node, executor="local")
        admin_key = bootstrap_admin(factory, s.admin_key_path)
        self.executor = LocalExecutor(
            node_id=self.node.id,
            logs_dir=s.logs_dir,
            workdir=s.home / "work",
            env={PLUGINS_ENV: ",".join(s.plugins)} if s.plugins else None,
            worker_lease_s=s.worker_lease_s,
        )
        config = SchedulerConfig(
            api_url=self.url,
            interval_s=s.scheduler_interval_s,
            cancel_grace_s=s.cancel_grace_s,
            usage_window_s=s.usage_window_s,
        )
        self.scheduler = Scheduler(factory, self.executor, node_ids=[self.node.id], config=config)
        self.scheduler.recover()
        self.journal = UsageJournal(s.usage_dir, factory, flush_interval_s=s.usage_flush_s)
        self.journal.start()  # writes what a crashed predecessor journalled
        ctx = build_context(
            s,
            factory,
            self.executor,
            node_ids=[self.node.id],
            on_change=self.scheduler.wake,
            journal=self.journal,
        )
        self.controller = EndpointController(factory, ctx.endpoints, settings=s.controller)
        self.datasets = ctx.datasets
        self.sweep_leftovers()  # what a killed predecessor's uploads left
        self.app = create_app(ctx)
        return Started(url=self.url, admin_key=admin_key)

    def start(self) -> Started:
        """Set up, then serve in background threads; returns once the API answers."""
        started = self.setup()
        self._start_scheduler()
        self._server = self._make_server()
        assert self._sock is not None
        self._threads.append(httpd.serve_in_thread(self._server, self._sock, name="api"))
        return started

    def serve_forever(self) -> None:
        """Run the API in this thread until SIGINT/SIGTERM (after `setup()`)."""
        self._start_scheduler()
        self._server = self._make_server()
        # uvicorn re-raises the SIGTERM it caught once it stopped serving; without a handler
        # of ours that would end the process before stop() flushes the usage journal.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self._serve()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and scheduling. Running attempts keep running; the next start
        re-adopts them."""
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        if self.executor is not None:
            self.executor.shutdown()
        if self.journal is not None:
            self.journal.close()
        if self.engine is not None:
            self.engine.dispose()

    def sweep_leftovers(self) -> list[Path]:
        """Remove upload and staging leftovers untouched for `staging_grace_s` (dataset
        uploads, half-stored datasets and artifacts, hub imports and conversions); uploads in
        progress, in this process or another sharing the home, are kept. Returns what went.
        Blocks. After `setup()`."""
        assert self.datasets is not None, "call setup() first"
        grace = self.settings.staging_grace_s
        return [*self.datasets.sweep_staging(grace),
                *sweep_staging(self.settings.artifacts_dir, grace),
                *sweep_hub_staging(self.settings.hub_dir, grace)]  # fmt: skip

    def _sweep_loop(self, stop: threading.Event) -> None:
        """`sweep_leftovers` every `SWEEP_INTERVAL_S` until `stop`; a failed sweep is logged."""
        while not stop.wait(SWEEP_INTERVAL_S):
            try:
                self.sweep_leftovers()
            except Exception:
                logger.exception("sweeping staging leftovers failed; retrying later")

    def _start_scheduler(self) -> None:
        assert self.scheduler is not None and self.controller is not None
        loops = (
            ("scheduler", self.scheduler.run),
            ("endpoints", self.controller.run),
            ("sweeper", self._sweep_loop),
        )
        for name, loop in loops:
            thread = threading.Thread(target=loop, args=(self._stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _make_server(self) -> uvicorn.Server:
        assert self.app is not None, "call setup() first"
        return httpd.make_server(self.app)

    def _serve(self) -> None:
        assert self._server is not None and self._sock is not None
        self._server.run(sockets=[self._sock])


def build_context(
    settings: ServerSettings,
    factory: sessionmaker[Session],
    executor: Executor | None,
    *,
    node_ids: list[str],
    on_change: Callable[[], None] = lambda: None,
    journal: UsageJournal | None = None,
) -> AppContext:
    """Wire the services the API calls (the platform does this; so do in-process tests).
    Without a `journal`, endpoint requests are served but not metered."""
    store = DatasetStore(settings.datasets_dir)
    artifacts = ArtifactStore(settings.artifacts_dir)
    model = settings.chat_stats_model  # counts chat datasets' tokens
    chat.use_token_counter(HubTokenCounts(settings.hub_dir, model) if model else None)
    jobs = JobService(
        factory,
        executor,
        node_ids=node_ids,
        on_change=on_change,
        path_roots=settings.path_roots,
        hub_dir=settings.hub_dir,
    )
    endpoints = EndpointService(factory, jobs, settings.controller)
    gateway = Gateway(
        load_routes=endpoints.routes,
        authenticate=partial(gateway_caller, factory),
        resolve_model=endpoints.servable_version,
        journal=journal,
        max_body_bytes=settings.max_predict_bytes,
        settings=settings.gateway,
    )
    endpoints.on_routes_change = gateway.invalidate
    datasets = DatasetService(
        factory,
        store,
        scratch=settings.home / "tmp",
        max_extract_bytes=settings.max_extract_bytes,
        max_archive_members=settings.max_archive_members,
        max_extract_ratio=settings.max_extract_ratio,
    )
    return AppContext(
        settings=settings,
        factory=factory,
        datasets=datasets,
        files=FileService(factory, datasets, artifacts, max_bytes=settings.max_upload_bytes),
        fine_tuning=FineTuningService(factory, jobs),
        jobs=jobs,
        endpoints=endpoints,
        gateway=gateway,
        endpoint_deleter=EndpointDeleter(
            gateway,
            start_delete=endpoints.start_delete,
            finish_delete=endpoints.finish_delete,
            drain_timeout_s=settings.endpoint_drain_s,
        ),
        worker=WorkerService(
            factory,
            on_change=on_change,
            artifacts=artifacts,
            max_artifact_bytes=settings.max_upload_bytes,
            hub_dir=settings.hub_dir,
        ),
        registry=RegistryService(factory, artifacts),
        keys=KeyService(factory, on_key_revoked=gateway.forget_key),
    )


def _bind(host: str, port: int) -> socket.socket:
    """`httpd.bind`, its OSError (taken, not ours to use, no such address) told as what to do."""
    try:
        return httpd.bind(host, port)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ModelfabError(
            f"cannot listen on {host}:{port} ({why}): is modelfab already "
            "running there? Stop it, or pick another port (--port or MODELFAB_PORT; "
            "0 picks a free one)",
            param="port",
            code="port_unavailable",
        ) from exc


def _exit_on_sigterm(*_: object) -> None:
    raise SystemExit(0)
