"""The pool view through the API: free capacity is on the requests' grid, never negative."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.models import Job
from tests.conftest import Api

# On the 0.01 grid they sum to the node's 8 slots, but as floats to 8 + 1.8e-15.
CPUS = [2.68, 1.6, 2.28, 0.36, 0.11, 0.97]


def test_free_cpus_are_rounded_to_the_grid_and_never_negative(
    api: Api, factory: sessionmaker[Session]
) -> None:
    key = api.create_tenant("vision")["api_key"]
    ids = []
    for cpus in CPUS:
        resp = api.call("POST", "/jobs", key, json={"recipe": "sleep", "resources": {"cpus": cpus}})
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    with factory.begin() as session:  # as if the scheduler had placed them all
        session.execute(
            update(Job).where(Job.id.in_(ids)).values(status="running", node_id=api.node_id)
        )
    pool = api.call("GET", "/pool", key).json()
    assert [n["cpus_free"] for n in pool["nodes"]] == [0.0]
    assert pool["totals"]["cpus_free"] == 0.0
