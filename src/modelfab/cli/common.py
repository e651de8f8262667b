"""Helpers shared by the command groups."""

from __future__ import annotations

import json
import re
from typing import Any

import typer

from modelfab.client import Client

SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$", re.IGNORECASE)


def client() -> Client:
    return Client()


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; values are JSON when they parse (3, 0.5, true, [1,2]), else strings.
    A key repeated gathers its values in a list (`student_layers=8 student_layers=4`)."""
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in repeated:
            out[key].append(value)
        elif key in out:
            out[key] = [out[key], value]
            repeated.add(key)
        else:
            out[key] = value
    return out


def parse_size(text: str | None) -> int:
    """'0', '512M', '4G', '4GiB' -> bytes (binary units)."""
    if not text:
        return 0
    m = SIZE_RE.match(text.strip())
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size like 512M or 4G", param_hint="--memory")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * 1024**power)


def format_size(n: float) -> str:
    """Bytes for people, in decimal units: 950 B, 12.3 KB, 1.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
