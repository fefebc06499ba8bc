import json
import time

import pytest

from feedloop.events import Rejection, new_event, validate


def raw(event) -> bytes:
    return json.dumps(event).encode()


def test_historical_events_are_valid():
    assert not isinstance(validate(raw(new_event("view", "u1", "i1", ts_ms=874_965_758_000))), Rejection)


def test_valid_event_is_cleaned_and_unknown_fields_kept():
    event = new_event("dwell", "u1", "i1", dwell_ms=1200, colour="red")
    result = validate(raw(event))
    assert not isinstance(result, Rejection)
    assert result["dwell_ms"] == 1200 and result["extra"] == {"colour": "red"}


@pytest.mark.parametrize(
    "payload, field",
    [
        (b"{not json", "record"),
        (b"\xff\xfe\x00", "record"),
        (b"[1, 2]", "record"),
        (raw({**new_event("click", "u1", "i1"), "event_type": "hover"}), "event_type"),
        (raw({**new_event("click", "u1", "i1"), "event_id": "nope"}), "event_id"),
        (raw({k: v for k, v in new_event("click", "u1", "i1").items() if k != "user_id"}), "user_id"),
        (raw(new_event("click", "u1", None)), "item_id"),
        (raw(new_event("search", "u1", None)), "query"),
        (raw(new_event("dwell", "u1", "i1", dwell_ms=-5)), "dwell_ms"),
        (raw(new_event("dwell", "u1", "i1", dwell_ms="5")), "dwell_ms"),
        (raw({**new_event("view", "u1", "i1"), "ts": "yesterday"}), "ts"),
        (raw({**new_event("view", "u1", "i1"), "ts": int(time.time())}), "ts"),
        (raw({**new_event("view", "u1", "i1"), "ts": int(time.time() * 1000) + 3 * 86_400_000}), "ts"),
        (raw({**new_event("view", "u1", "i1"), "position": -1}), "position"),
        (b"x" * 2_000_000, "record"),
    ],
)
def test_rejections_name_the_field(payload, field):
    result = validate(payload)
    assert isinstance(result, Rejection)
    assert result.field == field
