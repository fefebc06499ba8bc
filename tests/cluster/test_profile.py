"""The cluster profile's stack: every member it asks for runs and is healthy."""

from infra.registry import active
from infra.stack import status_rows


def test_every_member_of_the_cluster_profile_is_up_and_healthy(settings):
    rows = {row["service"]: row for row in status_rows(settings)}
    expected = {s.name for s in active(settings) if not s.optional}
    assert settings.profile == "cluster"
    assert expected <= set(rows)
    assert [name for name in expected if not rows[name]["healthy"]] == []
