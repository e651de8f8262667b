"""The gateway's route table under an `invalidate()` that lands while a refresh runs.

`load_routes` runs in a worker thread; here it blocks on an event so the test decides
exactly when it returns: the invalidate comes after the load started and before it ended."""

from __future__ import annotations

import asyncio
import threading

from modelfab.gateway import Gateway, ReplicaRoute, Route


def route(version_id: str) -> Route:
    return Route(
        endpoint_id="ep_1",
        tenant_id="t_1",
        name="parts",
        version_id=version_id,
        max_batch_size=8,
        max_wait_ms=5.0,
        replicas=(ReplicaRoute("job_1", "http://127.0.0.1:1", "s"),),
    )


def no_call(*_: object) -> object:
    raise AssertionError("not called in this test")


def test_an_invalidate_during_a_refresh_answers_and_the_stale_table_is_not_kept() -> None:
    started, release = threading.Event(), threading.Event()
    loads: list[str] = []

    def load_routes() -> dict[tuple[str, str], Route]:
        version = "v_old" if not loads else "v_new"
        loads.append(version)
        if version == "v_old":
            started.set()
            assert release.wait(5), "the test never released the first load"
        return {("t_1", "parts"): route(version)}

    gateway = Gateway(
        load_routes=load_routes, authenticate=no_call, resolve_model=no_call, journal=None
    )

    async def interleave() -> tuple[str, str]:
        first = asyncio.create_task(gateway.routes())
        assert await asyncio.to_thread(started.wait, 5), "the first load never started"
        gateway.invalidate()  # the endpoint changed while the old table was being read
        release.set()
        answered = await first  # answers with what it loaded (no 500)
        after = await gateway.routes()  # the stale table was not installed: a fresh load
        return answered[("t_1", "parts")].version_id, after[("t_1", "parts")].version_id

    assert asyncio.run(interleave()) == ("v_old", "v_new")
    assert loads == ["v_old", "v_new"]
