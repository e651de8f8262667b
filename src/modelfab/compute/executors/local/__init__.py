"""The local executor: each attempt is a subprocess in its own process group."""

from modelfab.compute.executors.local.executor import LocalExecutor

__all__ = ["LocalExecutor"]
