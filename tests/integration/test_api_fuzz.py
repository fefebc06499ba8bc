"""Fuzz the feed API from its own OpenAPI schema (schemathesis), over real HTTP and real Redis.

Every operation gets a bounded number of generated requests, valid and invalid. No
answer may be a server error other than 503 (a dependency down), and every answer must
match the documented status codes, content types and response schemas.

POST /v1/events is fuzzed without a valid API key, so nothing reaches Kafka.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from feedloop.settings import Settings
from serving.app import create_app
from tests.integration.test_api_failures import serving

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 20
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def api_base(settings):
    with serving(create_app(settings)) as base:
        yield base


# The OpenAPI document does not depend on the settings, so it is read from an app built
# with the defaults at import (creating the app opens no connection).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                     derandomize=True)
def test_no_server_errors_and_answers_match_the_schema(case, api_base):
    response = case.call(base_url=api_base, timeout=5)
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: {response.text[:300]}")
    case.validate_response(response, checks=CHECKS)
