"""Property-based: schemathesis drives every operation of /openapi.json against the app.

No 5xx for any input, and every answer is declared in the document (status,
content type, body schema). Positive and negative (schema-breaking) cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from risk_engine.api import create_app
from risk_engine.config import Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Examples per operation: the decision endpoint is the contract's, the rest get fewer;
# a reload loads the model from disk each time.
EXAMPLES = {("POST", "/v1/decisions"): 300, ("POST", "/v1/admin/reload"): 5}
DEFAULT_EXAMPLES = 40


@pytest.fixture
def api_schema(make_settings: Callable[..., Settings], api_key: str) -> Any:
    # The test's one key holds every scope (decide by the list, admin by its variable).
    both = {"ops": "admin:" + hashlib.sha256(api_key.encode()).hexdigest()}
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(make_settings(api_keys=both)))


@pytest.mark.slow
def test_every_operation_answers_as_documented(api_schema: Any, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )
        count = EXAMPLES.get((operation.method.upper(), operation.path), DEFAULT_EXAMPLES)

        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
