"""The sweep: schemathesis over the whole /v1 API in-process (its ASGI transport, a real
database), once with the admin key and once with a member's, with a bounded number of
examples per operation, valid and invalid alike. Every answer must be a documented status
with a documented body and content type, and never a 5xx.

Excluded: predict (it forwards to replicas, which are real processes). Worker routes are
swept with the key as a (garbage) job token: they must answer 401.

schemathesis' pytest integration (`pytest.from_fixture`) breaks under pytest 9.2 (it sets
`request.node._nodeid`), so each operation's cases are driven here, with the `api` fixture's
app and database."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.conftest import Api

pytestmark = pytest.mark.fuzz

MAX_EXAMPLES = 8
"""Random examples (valid and invalid) per operation and key; with the coverage cases the
whole sweep takes about a minute on two cores (about 1,000 cases per key)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_COVERAGE_CASES = 30
"""Per operation and key, of schemathesis' coverage phase (boundaries, wrong methods)."""
EXCLUDED_PATHS = ["/v1/endpoints/{name}/predict"]


@pytest.fixture(params=["admin", "member"])
def key(request: pytest.FixtureRequest, api: Api) -> str:
    """The admin key, or a member key of a fresh tenant."""
    if request.param == "admin":
        return api.admin_key
    return str(api.create_tenant()["api_key"])


def _sweep(operation: Any, key: str) -> int:
    """Runs `operation`'s examples with `key`; returns how many ran. Raises the first
    failing check (hypothesis shrinks it to a minimal case)."""
    ran = 0

    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)

    @given(case=st.one_of(*(operation.as_strategy(mode) for mode in modes)))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    run()
    return ran


def _cover(schema: Any, operation: Any, key: str) -> int:
    """Runs schemathesis' coverage cases of `operation` (each bound just inside and outside,
    methods the path does not take) with `key`, at most `MAX_COVERAGE_CASES` of them;
    returns how many ran. Raises on the first failing check."""
    cases = schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=schema.config.generation_for(operation=operation),
    )
    ran = 0
    for case in itertools.islice(cases, MAX_COVERAGE_CASES):
        ran += 1
        case.call_and_validate(
            headers={"Authorization": f"Bearer {key}"}, checks=[*CHECKS, unsupported_method]
        )
    return ran


def test_api_conforms(api: Api, key: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    schema = schema.exclude(path=EXCLUDED_PATHS)
    failures: list[str] = []
    cases = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            cases += _cover(schema, operation, key)
            cases += _sweep(operation, key)
        except BaseException as exc:  # hypothesis raises an ExceptionGroup of failures
            failures.append(f"{operation.label}: {exc}")
    print(f"schemathesis sweep: {cases} cases")
    assert not failures, "\n\n".join(failures)
