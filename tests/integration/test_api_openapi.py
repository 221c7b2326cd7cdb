"""Schemathesis over the live server's ``/openapi.json``: no input makes the API fail.

One schemathesis run (its examples, coverage, fuzzing and stateful phases, with valid and
invalid inputs) covers every operation of the published spec, as alice, against the real API in
front of real workers. The tests below read its outcome: every operation was exercised,
enough cases were sent, no answer was a 5xx and no body held a traceback. The figures are
printed (``-s``) for the run's report.

Why not ``schemathesis.pytest.from_fixture(...).parametrize()``: with the installed
pytest 9 its lazy loader fails before running a case (``'Function' object has no attribute
'_nodeid'``), and the eager ``schema.parametrize()`` needs the spec at collection time,
before the server fixture runs. The programmatic engine is the same machinery the
``schemathesis`` CLI uses.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import events, from_schema

from tests.support.api_server import ALICE, ApiServer

# the fuzz run (about 3,000 requests) is set up once for the module; on a machine busy with
# other work it takes several times its 50 s on a quiet one
pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(600)]

MAX_EXAMPLES = 200
MIN_TOTAL_CASES = 2000
SERVER_ERROR_CHECK = "not_a_server_error"
# every check schemathesis has: status codes, content types, headers and bodies conform
# to the spec, valid data accepted and invalid data refused, auth not ignored, and so on
ALL_CHECKS = {
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance", "positive_data_acceptance",
    "negative_data_rejection", "use_after_free", "ensure_resource_availability",
    "missing_required_header", "ignored_auth", "unsupported_method", "allow_header_conformance",
}  # fmt: skip
# (operation, check) findings that are not defects, and why
TOLERATED = {
    ("GET /v1/jobs", "positive_data_acceptance"):
        "a cursor is opaque: only one the API handed out is valid, whatever its shape",
    ("POST /v1/jobs", "positive_data_acceptance"):
        "args are checked against the task's own schema (GET /v1/tasks lists them), which the"
        " job schema does not repeat: any object passes the spec",
    ("POST /v1/jobs/batch", "positive_data_acceptance"): "the same, for each item",
    ("PUT /v1/schedules/{name}", "positive_data_acceptance"):
        "the same for a schedule's args; and a cron expression, a time zone name and the"
        " choice of exactly one of cron and every_seconds are checked beyond the schema",
    ("Stateful tests", "positive_data_acceptance"): "the same, in sequences of calls",
}  # fmt: skip

OPERATIONS = {
    "POST /v1/jobs",
    "POST /v1/jobs/batch",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "POST /v1/jobs/{job_id}/cancel",
    "POST /v1/jobs/{job_id}/retry",
    "PUT /v1/schedules/{name}",
    "GET /v1/schedules",
    "GET /v1/schedules/{name}",
    "DELETE /v1/schedules/{name}",
    "POST /v1/schedules/{name}/pause",
    "POST /v1/schedules/{name}/resume",
    "POST /v1/blobs",
    "GET /v1/blobs/{blob}",
    "GET /v1/tasks",
    "GET /v1/stats",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
}


def unresolved_references(spec: dict[str, Any]) -> list[str]:
    """Every local ``$ref`` of ``spec`` that points at nothing."""
    missing: set[str] = set()
    stack: list[Any] = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                target: Any = spec
                for part in ref[2:].split("/"):
                    if not isinstance(target, dict) or part not in target:
                        missing.add(ref)
                        break
                    target = target[part]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(missing)


@dataclass
class FuzzReport:
    """What one schemathesis run did and found."""

    seed: int
    elapsed: float = 0.0
    stop_reason: str = ""
    cases: Counter[str] = field(default_factory=Counter)
    cases_by_phase: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    other_findings: Counter[str] = field(default_factory=Counter)
    findings: set[tuple[str, str]] = field(default_factory=set)
    checks_run: set[str] = field(default_factory=set)
    finding_samples: dict[str, str] = field(default_factory=dict)
    engine_errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def record(self, finished: events.ScenarioFinished) -> None:
        recorder = finished.recorder
        label = recorder.label
        self.cases[label] += len(recorder.cases)
        self.cases_by_phase[f"{finished.phase.value}: {label}"] += len(recorder.cases)
        for interaction in recorder.interactions.values():
            response = interaction.response
            if response is None:
                continue
            self.statuses[f"{label} -> {response.status_code}"] += 1
            sent = f"{interaction.request.method} {interaction.request.uri}"
            if response.status_code >= 500:
                body = response.content[:400].decode(errors="replace")
                self.server_errors.append(f"{sent}\n    -> {response.status_code} {body}")
            if b"Traceback" in response.content:
                self.tracebacks.append(f"{sent} -> {response.status_code}")
        for checks in recorder.checks.values():
            for check in checks:
                self.checks_run.add(check.name)
                if check.status.value == "success" or check.failure_info is None:
                    continue
                key = f"{label}: {check.name}"
                failure = check.failure_info.failure
                detail = " ".join(failure.message.split())[:300]
                sample = f"{failure.title} ({detail}): {check.failure_info.code_sample}"
                if check.name == SERVER_ERROR_CHECK:
                    self.server_errors.append(sample)
                else:
                    self.findings.add((label, check.name))
                    self.other_findings[key] += 1
                    self.finding_samples.setdefault(key, sample[:900])

    def print(self) -> None:
        print(
            f"\nschemathesis: {self.total} cases ({len(self.cases)} operations and scenarios) in "
            f"{self.elapsed:.1f} s (seed {self.seed}, stopped: {self.stop_reason})"
        )
        for label, count in sorted(self.cases.items()):
            print(f"  {count:5d}  {label}")
        print("cases by phase:")
        for label, count in sorted(self.cases_by_phase.items()):
            print(f"  {count:5d}  {label}")
        print("answers:")
        for label, count in sorted(self.statuses.items()):
            print(f"  {count:5d}  {label}")
        print(f"server errors: {len(self.server_errors)}")
        for failure in self.server_errors[:20]:
            print(f"  {failure}")
        print(f"bodies with a traceback: {len(self.tracebacks)}")
        for failure in self.tracebacks[:20]:
            print(f"  {failure}")
        print(f"engine errors: {len(self.engine_errors)}")
        for failure in self.engine_errors[:20]:
            print(f"  {failure}")
        print(f"checks run: {', '.join(sorted(self.checks_run))}")
        print("other schemathesis checks that failed (asserted, but for the tolerated ones):")
        for key, count in sorted(self.other_findings.items()):
            print(f"  {count:5d}  {key}\n         {self.finding_samples[key]}")


@pytest.fixture(scope="module")
def published_spec(api: ApiServer) -> dict[str, Any]:
    response = httpx.get(f"{api.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def _delete_schedules(api: ApiServer) -> None:
    with api.client(ALICE[1]) as client:
        for schedule in client.get("/v1/schedules").json()["items"]:
            client.delete(f"/v1/schedules/{schedule['name']}")


@pytest.fixture(scope="module")
def fuzz_report(api: ApiServer) -> Iterator[FuzzReport]:
    """One schemathesis run over every operation of the live spec; its report, printed."""
    config = schemathesis.Config.from_dict(
        {
            "suppress-health-check": ["too_slow", "filter_too_much"],
            "continue-on-failure": True,
            "request-timeout": 30,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            # the spec declares no links; schemathesis infers them from the Location headers
            # (enqueue, then read, cancel and retry that job)
            "phases": {"stateful": {"enabled": True}},
            "auth": {"openapi": {"HTTPBearer": {"bearer": ALICE[1]}}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json", config=config)
    report = FuzzReport(seed=config.seed)
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            report.record(event)
        elif isinstance(event, events.NonFatalError):
            report.engine_errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.engine_errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.SchemaAnalysisWarnings):
            report.engine_errors.extend(repr(warning) for warning in event.warnings)
        elif isinstance(event, events.EngineFinished):
            report.stop_reason = event.stop_reason.value
    report.elapsed = time.monotonic() - started
    _delete_schedules(api)  # the session's workers would go on firing what it created
    yield report
    report.print()  # at teardown, after the tests that read it


def test_spec_references_resolve(published_spec: dict[str, Any]) -> None:
    assert unresolved_references(published_spec) == []


def test_spec_lists_every_operation(published_spec: dict[str, Any]) -> None:
    operations = {
        f"{method.upper()} {path}"
        for path, item in published_spec["paths"].items()
        for method in item
    }
    assert operations >= OPERATIONS
    body = published_spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    schema = body["application/json"]["schema"]
    if "$ref" in schema:
        schema = published_spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert {"task", "args"} <= set(schema["properties"])


def test_spec_documents_the_refusals_of_every_v1_operation(
    published_spec: dict[str, Any],
) -> None:
    # every /v1 call authenticates and counts against the rate limit first
    undocumented = {
        f"{method.upper()} {path}": sorted({"401", "429"} - set(operation["responses"]))
        for path, item in published_spec["paths"].items()
        if path.startswith("/v1/")
        for method, operation in item.items()
        if not {"401", "429"} <= set(operation["responses"])
    }
    assert undocumented == {}


def test_fuzz_run_completes_without_engine_errors(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.stop_reason == "completed"
    assert fuzz_report.engine_errors == []


def test_every_operation_is_fuzzed(fuzz_report: FuzzReport) -> None:
    assert set(fuzz_report.cases) >= OPERATIONS
    assert all(fuzz_report.cases[label] > 0 for label in OPERATIONS), fuzz_report.cases


def test_enough_cases(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.total >= MIN_TOTAL_CASES


def test_no_input_makes_a_server_error(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.server_errors == []


def test_no_answer_carries_a_traceback(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.tracebacks == []


def test_every_check_runs(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.checks_run >= ALL_CHECKS - {"use_after_free", "ensure_resource_availability"}


def test_answers_conform_to_the_spec(fuzz_report: FuzzReport) -> None:
    """Status codes, headers, content types and bodies as documented; valid data accepted."""
    untolerated = {finding for finding in fuzz_report.findings if finding not in TOLERATED}
    samples = {
        f"{label}: {check}": fuzz_report.finding_samples.get(f"{label}: {check}", "")
        for label, check in untolerated
    }
    assert not untolerated, samples
