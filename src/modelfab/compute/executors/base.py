"""The executor interface: launch, poll, cancel, logs. Extra abilities are opt-in mixins."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchSpec:
    job_id: str
    attempt: int
    token: str
    cuda_visible_devices: str
    api_url: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended. `code` is None when the process was not ours to wait on."""

    code: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int
    next_offset: int


class Executor(abc.ABC):
    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> int:
        """Start the attempt; returns its pid (or another handle id). Raises OSError on failure."""

    @abc.abstractmethod
    def poll(self, job_id: str) -> ExitInfo | None:
        """None while the attempt runs; its ExitInfo once it ended. Never blocks."""

    @abc.abstractmethod
    def cancel(self, job_id: str, grace_s: float) -> None:
        """Ask the attempt to stop, then kill it after `grace_s`. Returns at once."""

    @abc.abstractmethod
    def logs(self, job_id: str, attempt: int, offset: int, limit: int) -> LogChunk:
        """Up to `limit` bytes of the attempt's output from `offset`."""


class Reattachable(abc.ABC):
    """An executor that can find attempts still running after the control plane restarted."""

    @abc.abstractmethod
    def running_attempts(self) -> dict[str, int]:
        """job id -> attempt number, for every attempt of this node still running."""

    @abc.abstractmethod
    def adopt(self, job_id: str, attempt: int) -> bool:
        """Track a running attempt found by running_attempts(); False if it is gone."""

    @abc.abstractmethod
    def kill_stray(self, job_id: str, attempt: int) -> None:
        """Kill an attempt that must not run (cancelled, or superseded) without tracking it."""
