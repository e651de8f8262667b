"""Typed settings, one object per component, read once from `MODELFAB_*` and passed in.

Tests build these objects directly instead of patching the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PORT = 8470


def default_home() -> Path:
    return Path.home() / ".modelfab"


class GatewaySettings(BaseSettings):
    """The gateway's tuning (`MODELFAB_GATEWAY_*`): caches, retries and timeouts of the
    predict path."""

    model_config = SettingsConfigDict(env_prefix="MODELFAB_GATEWAY_", extra="ignore")

    routes_ttl_s: float = Field(
        default=0.5,
        gt=0,
        description="Age after which the route table refreshes in the background.",
    )
    auth_ttl_s: float = Field(
        default=10.0, ge=0, description="How long a key's principal and a `?model=` ref are cached."
    )
    bench_s: float = Field(
        default=2.0, ge=0, description="How long a replica that dropped a connection is skipped."
    )
    max_tries: int = Field(
        default=3,
        ge=1,
        description="Replicas one request is tried on (predictions are idempotent).",
    )
    forward_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for a replica's answer (then 504)."
    )
    max_connections: int = Field(
        default=512, ge=1, description="Pooled keep-alive connections to replicas, all together."
    )
    reserve_max_tokens: int = Field(
        default=256,
        ge=0,
        description="Completion tokens a request without max_tokens reserves against its key's "
        "tokens per minute (settled to the generated count after).",
    )


class ControllerSettings(BaseSettings):
    """The endpoint controller's tuning (`MODELFAB_CONTROLLER_*`): probes, warming, retry
    limits."""

    model_config = SettingsConfigDict(env_prefix="MODELFAB_CONTROLLER_", extra="ignore")

    interval_s: float = Field(
        default=0.5, gt=0, description="How often endpoints and replicas are reconciled."
    )
    probe_timeout_s: float = Field(
        default=2.0, gt=0, description="Longest wait for a replica's /health answer."
    )
    unhealthy_after: int = Field(
        default=3,
        ge=1,
        description="Failed probes in a row after which a replica takes no requests.",
    )
    stats_max_age_s: float = Field(
        default=10.0,
        gt=0,
        description="A replica's last probed report older than this is shown as none.",
    )
    warm_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for a replica to load a model version."
    )
    replica_max_attempts: int = Field(
        default=3, ge=1, description="Attempts of one replica job before the scheduler gives up."
    )
    failed_replicas_limit: int = Field(
        default=3,
        ge=1,
        description="Replica jobs failed since the endpoint last changed before it is failed.",
    )
    delete_timeout_s: float = Field(
        default=60.0, gt=0, description="A delete whose drain never finished is finished after."
    )
    prune_after_s: float = Field(
        default=600.0, ge=0, description="Replica rows of jobs that ended this long ago go."
    )


class ServerSettings(BaseSettings):
    """What `modelfab up` runs with."""

    model_config = SettingsConfigDict(env_prefix="MODELFAB_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="State, datasets, logs.")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite under `home` when unset."
    )
    fake_gpus: int = Field(default=0, ge=0, description="Declare N fake devices (tests, demos).")
    cpus: float | None = Field(
        default=None, description="CPU slots of this node; all cores if unset."
    )
    public_url: str | None = Field(
        default=None, description="URL workers use to reach the API; derived from host:port."
    )
    scheduler_interval_s: float = Field(default=0.5, gt=0, description="Idle tick of the loop.")
    cancel_grace_s: float = Field(default=5.0, ge=0, description="SIGTERM to SIGKILL, seconds.")
    worker_lease_s: float = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="A worker or replica that cannot reach the control plane for this many "
        "seconds stops itself (a training job keeps its last epoch's checkpoint); when it "
        "could report that, or a restarted control plane found it gone, the job is re-queued "
        "without spending an attempt (the control plane's absence is not the job's fault).",
    )
    max_upload_bytes: int = Field(default=20 * 2**30, description="Largest dataset archive.")
    max_extract_bytes: int = Field(
        default=20 * 2**30,
        gt=0,
        description="Most bytes one dataset archive may unpack to (refused with 413 as soon "
        "as extraction passes it).",
    )
    max_extract_ratio: float = Field(
        default=100.0,
        ge=1,
        allow_inf_nan=False,
        description="Most bytes one dataset archive may unpack to per byte of the archive "
        "(images barely compress; a bomb of zeros does ~1000-fold); the first 64 MiB are "
        "always allowed. Refused with 413 as soon as extraction passes it.",
    )
    max_archive_members: int = Field(
        default=1_000_000, gt=0, description="Most files and folders one dataset archive holds."
    )
    staging_grace_s: float = Field(
        default=3600.0,
        gt=0,
        description="Upload and staging leftovers of a killed process (under home/tmp, "
        ".tmp-* in datasets and artifacts) in which nothing was written for this long are "
        "removed, at start and every 10 minutes; must exceed any one step of an upload.",
    )
    idempotency_ttl_s: float = Field(
        default=86400.0,
        gt=0,
        description="How long the first answer to a create sent with an Idempotency-Key is "
        "kept (a retry with that key within it answers the same and does nothing again).",
    )
    chat_stats_model: str | None = Field(
        default="smollm2-135m-instruct",
        description="The hub chat model whose tokenizer and chat template count the tokens "
        "of chat datasets (their stats, and the context check); empty: characters only.",
    )
    usage_window_s: float = Field(
        default=7 * 86400, description="How far back usage counts towards fair share."
    )
    max_predict_bytes: int = Field(default=32 * 2**20, description="Largest predict body.")
    endpoint_drain_s: float = Field(
        default=30.0, ge=0, description="How long a deleted endpoint's requests may finish."
    )
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description="The gateway's tuning."
    )
    controller: ControllerSettings = Field(
        default_factory=ControllerSettings, description="The endpoint controller's tuning."
    )
    usage_flush_s: float = Field(
        default=1.0, gt=0, description="How often journalled request usage is written."
    )
    path_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose paths non-admin tenants' jobs may name (batch-inspection "
        "input and output); admins may name any path.",
    )
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules imported at start that register tasks or recipes "
        "(MODELFAB_PLUGINS=pkg.a,pkg.b); workers read the same variable.",
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: Any) -> Any:
        """MODELFAB_PLUGINS is comma-separated; a list is taken as is."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def sqlite_path(self) -> Path:
        return self.home / "modelfab.db"

    @property
    def url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path}"

    @property
    def api_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def usage_dir(self) -> Path:
        return self.home / "usage"

    @property
    def hub_dir(self) -> Path:
        return self.home / "hub"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"


class ClientSettings(BaseSettings):
    """What the CLI and SDK read: where the API is and which key to use."""

    model_config = SettingsConfigDict(env_prefix="MODELFAB_", extra="ignore")

    url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    api_key: str | None = None
    timeout_s: float = 60.0
