"""schemathesis against the running server's own OpenAPI schema: generated requests for every operation
(valid and invalid query parameters and multipart bodies) get no 5xx, and every answer matches the schema
(documented status code, content type and body)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from medimg.serving.process import running_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_openapi")
    overrides = [f"ckpt_path={tiny_ckpt}", f"hydra.run.dir={tmp / 'run'}", "limits.max_files=2",
                 "limits.max_file_bytes=100000", "log_level=warning"]
    with running_server(overrides, tmp / "server.log") as s:
        yield s


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_error_and_answers_match_the_schema(server, mode):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    seen = []

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def call(case):
        response = case.call_and_validate(checks=CHECKS, timeout=60)
        seen.append((case.operation.label, response.status_code))

    call()
    assert server.process.poll() is None
    # negative cases exist only for operations with inputs to break
    posts = {"POST /predict", "POST /explain"}
    assert {label for label, _ in seen} >= (posts if mode == GenerationMode.NEGATIVE else {*posts, "GET /health"})
