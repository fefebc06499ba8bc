"""Fuzz the feed API from its own OpenAPI schema (schemathesis), over real HTTP and real Redis.

Every operation gets a bounded number of generated requests, valid and invalid. Redis
and Kafka are up throughout, so no answer may be a server error, 503 included, and every
answer must match the documented status codes, content types and response schemas.

POST /v1/events is fuzzed with the stack's API key and the documented event v1 body, so
generated batches reach the event validator (422 naming the field) and, when valid, Kafka.
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
EVENT_ANSWERS: list[tuple[int, str, bool]] = []  # (status, body, sent the valid key?) of each fuzzed POST /v1/events


@pytest.fixture(scope="module")
def api_base(settings):
    with serving(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def api_key(settings):
    assert settings.api.api_key, "the test stack has no API key: POST /v1/events would stop at 403"
    return settings.api.api_key


# The OpenAPI document does not depend on the settings, so it is read from an app built
# with the defaults at import (creating the app opens no connection).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                     derandomize=True)
def test_no_server_errors_and_answers_match_the_schema(case, api_base, api_key):
    response = case.call(base_url=api_base, timeout=5, headers={"X-API-Key": api_key})
    if case.method == "POST" and case.path == "/v1/events":
        keyed = response.request.headers.get("X-API-Key") == api_key  # negative cases also mutate the key header
        EVENT_ANSWERS.append((response.status_code, response.text[:300], keyed))
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: {response.text[:300]}")
    case.validate_response(response, checks=CHECKS)


def test_fuzzed_event_batches_got_past_the_key_to_the_validator_and_kafka():
    """The key opened the door: batches were judged on their events (422 naming one), valid ones taken (202)."""
    keyed = [(status, body) for status, body, with_key in EVENT_ANSWERS if with_key]
    assert keyed, "no fuzzed batch carried the valid API key"
    statuses = {status for status, _ in keyed}
    assert not statuses & {401, 403}, sorted(statuses)
    assert any(status == 422 and '"invalid event"' in body for status, body in keyed), keyed[:5]
    assert 202 in statuses, keyed[:5]
