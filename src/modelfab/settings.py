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
    max_upload_bytes: int = Field(default=20 * 2**30, description="Largest dataset archive.")
    usage_window_s: float = Field(
        default=7 * 86400, description="How far back usage counts towards fair share."
    )
    max_predict_bytes: int = Field(default=32 * 2**20, description="Largest predict body.")
    endpoint_drain_s: float = Field(
        default=30.0, ge=0, description="How long a deleted endpoint's requests may finish."
    )
    controller_interval_s: float = Field(
        default=0.5, gt=0, description="How often endpoints and replicas are reconciled."
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
