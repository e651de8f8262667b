"""The usage journal: adds summed into usage records per tenant, ref and meter; nothing lost
or counted twice across a crash (a real `kill -9` of a process), a re-run segment or a
database outage; exact under many writer threads."""

from __future__ import annotations

import logging
import math
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import Tenant, UsageRecord
from modelfab.ids import new_id, now
from modelfab.usage_journal import SUFFIX, UsageJournal

Totals = dict[tuple[str, str, str], float]


def create_tenant(factory: sessionmaker[Session]) -> str:
    tenant_id = new_id("ten")
    with transaction(factory) as session:
        session.add(Tenant(id=tenant_id, name=tenant_id, created_at=now()))
    return tenant_id


def totals(factory: sessionmaker[Session]) -> Totals:
    """Recorded quantity per (tenant, ref_id, meter)."""
    sums: Totals = defaultdict(float)
    with factory() as session:
        for rec in session.scalars(select(UsageRecord)):
            assert rec.ref_type == "endpoint"
            sums[rec.tenant_id, rec.ref_id, rec.meter] += rec.quantity
    return dict(sums)


def record_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return len(session.scalars(select(UsageRecord.id)).all())


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def test_adds_are_summed_per_tenant_ref_and_meter(
    factory: sessionmaker[Session], journal_dir: Path
) -> None:
    a, b = create_tenant(factory), create_tenant(factory)
    journal = UsageJournal(journal_dir, factory)
    before = now()
    journal.add(a, "endpoint", "ep_1", requests=1, items=4)
    journal.add(a, "endpoint", "ep_1", requests=1, items=2.5)
    journal.add(a, "endpoint", "ep_2", requests=1, items=1)
    journal.add(b, "endpoint", "ep_1", requests=1, items=8)
    after = now()
    assert journal.flush()
    journal.add(a, "endpoint", "ep_1", requests=1, replica_seconds=30)  # a second segment
    journal.close()

    assert totals(factory) == {
        (a, "ep_1", "requests"): 3,
        (a, "ep_1", "items"): 6.5,
        (a, "ep_1", "replica_seconds"): 30,
        (a, "ep_2", "requests"): 1,
        (a, "ep_2", "items"): 1,
        (b, "ep_1", "requests"): 1,
        (b, "ep_1", "items"): 8,
    }
    assert record_count(factory) == 8  # one per segment, tenant, ref and meter
    with factory() as session:
        first = session.scalars(select(UsageRecord).where(UsageRecord.tenant_id == b)).first()
    assert first is not None and before <= first.created_at <= after
    assert segments(journal_dir) == []


def test_a_segment_written_twice_counts_once(
    factory: sessionmaker[Session], journal_dir: Path, tmp_path: Path
) -> None:
    """A crash after the commit and before the delete leaves the segment to be re-read."""
    tenant = create_tenant(factory)
    journal = UsageJournal(journal_dir, factory)
    for _ in range(5):
        journal.add(tenant, "endpoint", "ep_1", requests=1, items=3)
    [segment] = segments(journal_dir)
    saved = shutil.copy(segment, tmp_path / segment.name)

    assert journal.flush()
    assert not segment.exists()
    shutil.copy(saved, segment)
    assert journal.flush()
    journal.close()

    assert totals(factory) == {(tenant, "ep_1", "requests"): 5, (tenant, "ep_1", "items"): 15}
    assert record_count(factory) == 2


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from sqlalchemy.orm import sessionmaker
    from modelfab.usage_journal import UsageJournal

    journal = UsageJournal(Path(sys.argv[1]), sessionmaker())  # never touches a database
    for _ in range(int(sys.argv[3])):
        journal.add(sys.argv[2], "endpoint", "ep_1", requests=1, items=2)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_process_loses_nothing(
    factory: sessionmaker[Session], journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real process, because only a real SIGKILL shows that no flush or atexit hook is
    needed: what `add()` wrote is in the page cache when the process dies."""
    tenant, n = create_tenant(factory), 2_000
    args = [sys.executable, "-c", CRASHING_WRITER, str(journal_dir), tenant, str(n)]
    proc = subprocess.run(args, capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    [segment] = segments(journal_dir)
    with segment.open("ab") as f:  # as if it had died in the middle of a line
        f.write(f"{now()}\t{tenant}\tendpoint\tep_1\treque".encode())

    journal = UsageJournal(journal_dir, factory)  # the dead process's lock is gone
    with caplog.at_level(logging.WARNING, logger="modelfab.usage_journal"):
        journal.start()
    journal.close()

    assert totals(factory) == {(tenant, "ep_1", "requests"): n, (tenant, "ep_1", "items"): 2 * n}
    assert "torn last line" in caplog.text
    assert segments(journal_dir) == []


def test_malformed_lines_are_skipped_not_fatal(
    factory: sessionmaker[Session], journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = create_tenant(factory)
    journal_dir.mkdir()
    ns = 1_700_000_000_000_000_000
    lines = [
        f"{ns}\t{tenant}\tendpoint\tep_1\trequests=1.0\titems=2.0",
        "garbage",
        f"{ns}\t{tenant}\tendpoint\tep_1\tgpu_hours=1.0",  # no such meter
        f"{ns}\t{tenant}\tendpoint\tep_1\trequests=nan",
        f"{ns + 10**9}\t{tenant}\tendpoint\tep_1\trequests=1.0",
    ]
    (journal_dir / f"{ns:020d}-1-00000000{SUFFIX}").write_text("\n".join(lines) + "\n")

    journal = UsageJournal(journal_dir, factory)
    with caplog.at_level(logging.WARNING, logger="modelfab.usage_journal"):
        assert journal.flush()
    journal.close()

    assert totals(factory) == {(tenant, "ep_1", "requests"): 2, (tenant, "ep_1", "items"): 2}
    assert caplog.text.count("malformed line") == 3
    with factory() as session:
        assert set(session.scalars(select(UsageRecord.created_at))) == {ns / 1e9 + 1}


def unreachable(engine: Engine, tmp_path: Path) -> Engine:
    """An engine like `engine` whose database does not exist."""
    if engine.dialect.name == "sqlite":
        return create_engine(f"sqlite:///{tmp_path / 'missing' / 'modelfab.db'}")
    return create_engine(engine.url.set(database="modelfab_no_such_database"))


def test_a_database_outage_keeps_segments_for_retry(
    factory: sessionmaker[Session],
    engine: Engine,
    journal_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = create_tenant(factory)
    down = unreachable(engine, tmp_path)
    flaky: sessionmaker[Session] = sessionmaker(down, expire_on_commit=False)
    journal = UsageJournal(journal_dir, flaky)
    try:
        with caplog.at_level(logging.ERROR, logger="modelfab.usage_journal"):
            journal.add(tenant, "endpoint", "ep_1", requests=1)
            assert not journal.flush()
            journal.add(tenant, "endpoint", "ep_1", requests=1)
            assert not journal.flush()
        assert "kept to retry" in caplog.text
        assert len(segments(journal_dir)) == 3  # two sealed, one open (empty)
        assert record_count(factory) == 0

        flaky.configure(bind=engine)  # the database is back
        assert journal.flush()
        journal.close()
    finally:
        down.dispose()
    assert totals(factory) == {(tenant, "ep_1", "requests"): 2}
    assert segments(journal_dir) == []


def test_usage_of_a_deleted_tenant_is_dropped_not_retried_forever(
    factory: sessionmaker[Session], journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its records would have gone with it (ON DELETE CASCADE); the rest of the segment,
    and the segments after it, must not wait on a foreign key that can never hold."""
    tenant = create_tenant(factory)
    journal = UsageJournal(journal_dir, factory)
    journal.add(tenant, "endpoint", "ep_1", requests=1)
    journal.add("ten_deleted", "endpoint", "ep_1", requests=1)
    with caplog.at_level(logging.WARNING, logger="modelfab.usage_journal"):
        assert journal.flush()
    journal.close()
    assert totals(factory) == {(tenant, "ep_1", "requests"): 1}
    assert "ten_deleted" in caplog.text


def test_many_threads_adding_while_flushing_give_exact_totals(
    factory: sessionmaker[Session], journal_dir: Path
) -> None:
    tenants = [create_tenant(factory) for _ in range(2)]
    journal = UsageJournal(journal_dir, factory, flush_interval_s=0.01)
    journal.start()
    threads, per_thread = 8, 1_000

    def work(i: int) -> None:
        for _ in range(per_thread):
            journal.add(tenants[i % 2], "endpoint", f"ep_{i % 4}", requests=1, items=3)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    journal.close()

    expected: Totals = defaultdict(float)
    for i in range(threads):
        expected[tenants[i % 2], f"ep_{i % 4}", "requests"] += per_thread
        expected[tenants[i % 2], f"ep_{i % 4}", "items"] += 3 * per_thread
    assert totals(factory) == expected


@pytest.mark.parametrize(
    ("ids", "quantities", "message"),
    [
        (("ten_1", "endpoint", "ep_1"), {"gpu_hours": 1}, "unknown meter"),
        (("ten_1", "endpoint", "ep_1"), {"items": math.inf}, "finite"),
        (("ten_1", "endpoint", "ep\t1"), {"requests": 1}, "ref_id"),
        (("ten_1", "endpoint", "e" * 65), {"requests": 1}, "ref_id must be 1 to 64"),
        (("ten_1\n", "endpoint", "ep_1"), {"requests": 1}, "tenant_id"),
        (("ten_1", "", "ep_1"), {"requests": 1}, "ref_type"),
    ],
)
def test_bad_adds_raise_and_write_nothing(
    journal_dir: Path, ids: tuple[str, str, str], quantities: dict[str, float], message: str
) -> None:
    journal = UsageJournal(journal_dir, sessionmaker())
    with pytest.raises(ValueError, match=message):
        journal.add(*ids, **quantities)
    assert [p.stat().st_size for p in segments(journal_dir)] == [0]
    journal.close()


def test_one_process_owns_a_directory(factory: sessionmaker[Session], journal_dir: Path) -> None:
    journal = UsageJournal(journal_dir, factory)
    with pytest.raises(RuntimeError, match="in use by another process"):
        UsageJournal(journal_dir, factory)
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        journal.add("ten_1", "endpoint", "ep_1", requests=1)
    UsageJournal(journal_dir, factory).close()
