"""Schemathesis against the server's own OpenAPI schema (/schema/openapi.json), over HTTP.

Every documented operation gets a bounded number of generated requests (coverage cases, then
Hypothesis examples, derandomized so CI sees the same cases every run), and every response must
be: no 5xx, a documented status, a documented content type, a body that matches the documented
schema (our error shape included), and a 2xx/3xx/401/403/404/409/429 for any request the schema
calls valid (positive_data_acceptance: the schema carries the server's constraints).

About half the positive cases are aimed at real objects of the signed-in user (an app, and a run of it that
the simulator ran), so handlers get past "not found": runs start (the embedded simulator),
files are read, checkpoints reverted, the app deleted (then made anew).

Not covered: the WebSocket (/ws/agent) and /v1/chat/completions (an ASGI handler) are not in
the schema (Litestar documents neither); /v1 is covered by tests/test_openai_proxy.py and the
socket by tests/test_agent_ws.py. The SSE operations are covered: with the simulator a run's
stream ends on its own within a second, and REQUEST_TIMEOUT_S turns a hang into a failure.

By hand, with more examples (and Schemathesis' stateful phase), against `runforge serve`
started with RUNFORGE_GEN_PER_MINUTE=0 RUNFORGE_STOPS_PER_MINUTE=0 RUNFORGE_SIM_PACE_MS=0:
`st run http://127.0.0.1:PORT/schema/openapi.json -H "Authorization: Bearer $TOKEN"
--max-examples 100 --checks not_a_server_error,status_code_conformance,content_type_conformance,
response_schema_conformance,positive_data_acceptance`. That run has no aim() or follow_run_id():
expect one ST202 on GET /runs/{run_id}/events (a Last-Event-ID of another run, see below).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from app.settings import LimitSettings, Settings
from tests.support import HANG_TIMEOUT_S, ServerThread

# Per operation; 24 operations. The whole file stays well under a minute on 2 cores. The longer
# run docs/reliability.md reports: RUNFORGE_FUZZ_EXAMPLES=100 pytest -s tests/test_schema_fuzz.py
MAX_EXAMPLES = int(os.environ.get("RUNFORGE_FUZZ_EXAMPLES", "10"))
REQUEST_TIMEOUT_S = 5.0
MAX_NEGATIVE_EXAMPLES = max(1, MAX_EXAMPLES // 2)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
# Requests the schema calls invalid: the answers (400s mostly) must be documented, in our shape.
# Not negative_data_rejection: the server answers some of them 413 (a message past maxLength,
# message_too_large), which that check does not count as a rejection.
NEGATIVE_CHECKS = CHECKS[:-1]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest's, without rate limits (a fuzzer is one user sending hundreds of requests a
    minute: 429s would hide the handlers), and with the simulator's answers at full speed."""
    return dataclasses.replace(settings, limits=LimitSettings(0, 0, 0), simulator_pace_ms=0.0)


@dataclass
class Targets:
    """Real objects of the signed-in user that cases are pointed at (made anew once deleted)."""

    server: ServerThread
    token: str
    app_id: str = ""
    run_id: str = ""

    def make(self) -> Targets:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.server.url, headers=headers, timeout=HANG_TIMEOUT_S) as http:
            created = http.post("/apps", json={"name": "fuzz target", "codeGenType": "html"})
            created.raise_for_status()
            self.app_id = created.json()["id"]
            # A finished run of the app (the simulator's answer), with its checkpoint.
            with http.stream("POST", "/app/chat/gen/code", json={"appId": self.app_id, "message": "a page"}) as gen:
                gen.raise_for_status()
                self.run_id = gen.headers["x-run-id"]
                for _ in gen.iter_bytes():
                    pass
        return self


@pytest.fixture
def targets(server: ServerThread, token: str) -> Targets:
    return Targets(server, token).make()


def aim(case: Case, targets: Targets) -> None:
    """Point the case's ids at the real app and run (values the schema allows for them)."""
    for params, key, value in (
        (case.path_parameters, "app_id", targets.app_id),
        (case.path_parameters, "run_id", targets.run_id),
        (case.query, "appId", targets.app_id),
        (case.body, "appId", targets.app_id),
        (case.body, "runId", targets.run_id),
        # /v1/interrupt: both ids may name the request when they are equal.
        (case.body, "requestId", targets.run_id),
        (case.body, "messageId", targets.run_id),
    ):
        if isinstance(params, MutableMapping) and isinstance(params.get(key), str):
            params[key] = value


def follow_run_id(case: Case) -> None:
    """Last-Event-ID names an event of the path's run (``<runId>:<seq>``): a constraint between
    two parameters, which OpenAPI cannot state. The generated seq is kept."""
    run_id = (case.path_parameters or {}).get("run_id")
    for params, key in ((case.headers, "Last-Event-ID"), (case.query, "lastEventId")):
        if run_id is not None and isinstance(params, MutableMapping) and isinstance(params.get(key), str):
            params[key] = f"{run_id}:{params[key].rpartition(':')[2]}"


def fuzz(operation: APIOperation, token: str, targets: Targets, mode: GenerationMode, tally: Counter[str]) -> None:
    """Requests to one operation, valid or not by its schema; raises the first failure, shrunk."""
    positive = mode is GenerationMode.POSITIVE

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), real=st.booleans())
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES if positive else MAX_NEGATIVE_EXAMPLES,
        derandomize=True,  # the same cases on every run: CI is deterministic
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def one(case: Case, real: bool) -> None:
        if real and positive:
            aim(case, targets)
        follow_run_id(case)
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {token}"},
            checks=CHECKS if positive else NEGATIVE_CHECKS,
            timeout=REQUEST_TIMEOUT_S,
        )
        tally[f"{response.status_code // 100}xx"] += 1
        if real and case.method == "DELETE" and response.status_code == 204:
            targets.make()  # the app (and its run) are gone: the next cases need new ones

    one()


@pytest.mark.timeout(120 * max(1, MAX_EXAMPLES // 10))  # ~30 s on 2 idle cores; a loaded CI machine gets headroom
def test_schema_holds(server: ServerThread, token: str, targets: Targets) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/schema/openapi.json")
    failures: dict[str, str] = {}
    tally: Counter[str] = Counter()  # responses that passed every check, by status class
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # raises on an operation schemathesis cannot read: a schema bug
        tested += 1
        # Invalid requests where there is something to get wrong: a body, a query, a header (a
        # path's free string has no invalid value, and Hypothesis would search in vain).
        negatable = len(operation.body) or len(operation.query) or len(operation.headers)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,):
            try:
                fuzz(operation, token, targets, mode, tally)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                failures[f"{operation.label} ({mode.value} data)"] = f"{type(exc).__name__}: {exc}"
    print(f"\nschema fuzz: {tested} operations, {tally.total()} requests, {dict(sorted(tally.items()))}")
    assert tested >= 20, f"only {tested} operations in the schema"
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
