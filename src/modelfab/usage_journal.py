"""A crash-safe, batched usage journal for the serving hot path.

`add()` appends one tab-separated line to the current segment file, a few microseconds
and no database. A flush seals the segment, sums it per (tenant, ref, meter) and writes the
sums in one transaction under idempotency keys derived from the segment's name, then
deletes the file. A crash anywhere in between re-reads the segment on the next start and
the keys make the second write a no-op: nothing is lost or counted twice across a restart,
`kill -9` included. Not across power loss: lines are never fsynced.

One process owns a directory (an exclusive `flock`, released by the kernel when the process
dies); create the journal after any fork, since a forked child would share the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import secrets
import threading
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import String, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab import metering
from modelfab.db.engine import transaction
from modelfab.db.models import Tenant, UsageRecord

logger = logging.getLogger(__name__)

SUFFIX = ".usage"
_METERS = frozenset(metering.METERS)
_FIELDS = ("tenant_id", "ref_type", "ref_id")
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC

Key = tuple[str, str, str, str]  # tenant_id, ref_type, ref_id, meter


class UsageJournal:
    """Usage lines in `directory`, written to the database every `flush_interval_s` seconds
    once `start()` has run (and by `flush()` and `close()`)."""

    def __init__(
        self, directory: Path, factory: sessionmaker[Session], *, flush_interval_s: float = 1.0
    ):
        """Open a fresh segment in `directory` (created if missing); adds work from here on.
        Raises RuntimeError when another live process holds the directory."""
        self.directory = directory
        self.flush_interval_s = flush_interval_s
        self._factory = factory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "journal.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(
                f"usage journal {directory} is in use by another process; "
                "give each control plane process a directory of its own"
            ) from None
        self._lock = threading.Lock()  # guards _fd, _segment, _dirty
        self._flush_lock = threading.Lock()  # one flush at a time
        self._segment, self._fd = self._open_segment()
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, tenant_id: str, ref_type: str, ref_id: str, /, **quantities: float) -> None:
        """Journal `quantities` (meter name → amount) for a tenant's `ref_type`/`ref_id`.

        One `os.write` under a lock: thread-safe, never waits on the database, survives the
        process dying once it returns (the bytes are in the OS page cache) but not a power
        loss. Raises ValueError for an unknown meter, a non-finite amount, or an id that is empty,
        too long for its column or holds a tab or newline; RuntimeError once closed;
        OSError when the disk refuses the line."""
        problem = _field_problem(tenant_id, ref_type, ref_id)
        if problem:
            raise ValueError(problem)
        if not quantities:
            return
        line = f"{time.time_ns()}\t{tenant_id}\t{ref_type}\t{ref_id}"
        for meter, quantity in quantities.items():
            if meter not in _METERS:
                raise ValueError(f"unknown meter {meter!r}")
            amount = float(quantity)
            if not math.isfinite(amount):  # one NaN would poison a whole sum
                raise ValueError(f"{meter} must be a finite number, not {quantity!r}")
            line += f"\t{meter}={amount!r}"
        data = (line + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise RuntimeError("usage journal is closed")
            written = os.write(self._fd, data)
            while written < len(data):  # a short write: rare, but never leave half a line
                written += os.write(self._fd, data[written:])
            self._dirty = True

    def start(self) -> None:
        """Write every segment an earlier process left behind, then flush in a daemon
        thread every `flush_interval_s` seconds until `close()`."""
        self.flush()
        self._thread = threading.Thread(target=self._run, name="usage-journal", daemon=True)
        self._thread.start()

    def flush(self) -> bool:
        """Seal the current segment and write every sealed one, oldest first; True when none
        is left. A segment that fails (database down, say) is logged and kept, with those
        after it, for the next flush. Blocks on the database; never on `add()` callers."""
        with self._flush_lock:
            self._seal(reopen=True)
            for path in self._sealed():
                try:
                    self._write_segment(path)
                except Exception:
                    logger.exception("usage journal: could not write %s; kept to retry", path)
                    return False
            return True

    def close(self) -> None:
        """Stop the flush thread, seal the segment and flush it; adds raise from here on.
        A segment the database refuses stays on disk for the next start. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._flush_lock:
            if self._lock_fd < 0:
                return
            self._seal(reopen=False)
        self.flush()
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception:  # an OSError sealing, say: keep the thread alive
                logger.exception("usage journal: flush failed")

    def _open_segment(self) -> tuple[str, int]:
        # Time first so names sort in time order; the pid and random part keep a name
        # unique across restarts even if the clock steps back and a pid is reused.
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        return name, os.open(self.directory / name, _OPEN_FLAGS, 0o644)

    def _seal(self, *, reopen: bool) -> None:
        """Hand writers a new segment (or none), so the old one is complete and ours."""
        with self._lock:
            if self._fd < 0 or (reopen and not self._dirty):
                return
            old = self._fd
            if reopen:
                self._segment, self._fd = self._open_segment()
            else:
                self._segment, self._fd = "", -1
            self._dirty = False
        os.close(old)

    def _sealed(self) -> list[Path]:
        with self._lock:
            current = self._segment
        return sorted(p for p in self.directory.glob(f"*{SUFFIX}") if p.name != current)

    def _write_segment(self, path: Path) -> None:
        """Write a sealed segment's sums in one transaction, then delete it. Usage of a
        tenant that no longer exists is dropped (its records would have been deleted with
        it) rather than failing the whole segment forever."""
        totals, at = _read_segment(path)
        if totals:
            segment = path.name.removesuffix(SUFFIX)
            with transaction(self._factory) as session:
                tenants = {key[0] for key in totals}
                known = set(session.scalars(select(Tenant.id).where(Tenant.id.in_(tenants))))
                if tenants - known:
                    logger.warning(
                        "usage journal: dropping usage of deleted tenants %s in %s",
                        sorted(tenants - known),
                        path.name,
                    )
                for key, quantity in totals.items():
                    if key[0] in known:
                        _record(session, segment, key, quantity, at)
        path.unlink()
        logger.debug("usage journal: wrote %d totals from %s", len(totals), path.name)


def _record(session: Session, segment: str, key: Key, quantity: float, at: float) -> None:
    tenant_id, ref_type, ref_id, meter = key
    # A digest, not the fields themselves: those alone could exceed the key's 160 characters.
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=16).hexdigest()
    metering.record(
        session,
        tenant_id=tenant_id,
        meter=meter,
        quantity=quantity,
        ref_type=ref_type,
        ref_id=ref_id,
        key=f"journal:{segment}:{digest}",
        at=at,
    )


def _read_segment(path: Path) -> tuple[dict[Key, float], float]:
    """Sums per (tenant, ref_type, ref_id, meter) and the latest time in a segment. A torn
    last line (the process died mid-write) and malformed lines are skipped with a warning."""
    lines = path.read_bytes().split(b"\n")
    if lines[-1]:
        logger.warning("usage journal: skipping torn last line of %s", path.name)
    totals: dict[Key, float] = defaultdict(float)
    latest = 0.0
    for raw in lines[:-1]:
        parsed = _parse_line(raw)
        if parsed is None:
            logger.warning("usage journal: skipping malformed line in %s: %r", path.name, raw)
            continue
        at, tenant_id, ref_type, ref_id, quantities = parsed
        latest = max(latest, at)
        for meter, quantity in quantities:
            totals[tenant_id, ref_type, ref_id, meter] += quantity
    return dict(totals), latest


def _parse_line(
    raw: bytes,
) -> tuple[float, str, str, str, list[tuple[str, float]]] | None:
    try:
        at, tenant_id, ref_type, ref_id, *pairs = raw.decode().split("\t")
        quantities = [(m, float(q)) for m, _, q in (pair.partition("=") for pair in pairs)]
        if _field_problem(tenant_id, ref_type, ref_id) or not all(
            m in _METERS and math.isfinite(q) for m, q in quantities
        ):
            return None
        return int(at) / 1e9, tenant_id, ref_type, ref_id, quantities
    except ValueError:  # UnicodeDecodeError is one too
        return None


def _column_length(name: str) -> int:
    column_type = UsageRecord.__table__.c[name].type
    assert isinstance(column_type, String) and column_type.length
    return column_type.length


# What the usage_records columns hold: a longer value would fail every flush of its segment.
_LIMITS = tuple(_column_length(name) for name in _FIELDS)


def _field_problem(tenant_id: str, ref_type: str, ref_id: str) -> str | None:
    """Why these ids cannot go in a journal line or a usage record; None when they can."""
    ids = tenant_id + ref_type + ref_id
    max_tenant, max_type, max_ref = _LIMITS
    if (
        0 < len(tenant_id) <= max_tenant
        and 0 < len(ref_type) <= max_type
        and 0 < len(ref_id) <= max_ref
        and "\t" not in ids
        and "\n" not in ids
    ):
        return None
    for name, value, limit in zip(_FIELDS, (tenant_id, ref_type, ref_id), _LIMITS, strict=True):
        if not value or len(value) > limit or "\t" in value or "\n" in value:
            return f"{name} must be 1 to {limit} characters without tabs or newlines"
    return None  # not reached: one of the fields failed above
