"""`feedloop import-movielens` against the real stack: catalogue in Hive, ratings as events, exactly once.

Uses a tiny ML-100K-format fixture (the real data set may not be copied into the
repo). Note: the import replaces the users and items tables of the test stack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from sources import movielens
from tests.integration.conftest import hive_query, wait_stream_caught_up

GENRES = ["unknown", "Action", "Comedy", "Drama"]
# item ids no real ML-100K film has (1..1682), so these events never share an event id with the real
# data set's (test_retrain_movielens counts those)
ITEM_OFFSET = 9000
FIXTURE_ITEMS = tuple(f"ml{ITEM_OFFSET + n}" for n in (1, 2, 3))
# ratings within two hours of one day, so the sink touches two partitions
RATINGS = [(1, 1, 5, 874965758), (1, 2, 3, 874965800), (2, 1, 4, 874966000), (2, 3, 5, 874969500),
           (3, 2, 1, 874969600), (3, 3, 4, 874969700)]


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def write_ml_files(path: Path, user_offset: int = 0, day_offset_s: int = 0) -> Path:
    """A tiny ML-100K-format data set: 3 users (ids 1-3, plus ``user_offset``), 3 items, 6 ratings."""
    ids = [1 + user_offset, 2 + user_offset, 3 + user_offset]
    (path / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)), encoding="latin-1")
    (path / "u.user").write_text(f"{ids[0]}|24|M|technician|85711\n{ids[1]}|53|F|other|94043\n"
                                 f"{ids[2]}|33|F|writer|32067\n", encoding="latin-1")
    (path / "u.item").write_text(
        f"{ITEM_OFFSET + 1}|Heat (1995)|01-Jan-1995||http://x/1|{_flags('Action')}\n"
        f"{ITEM_OFFSET + 2}|Clueless (1995)|01-Jan-1995||http://x/2|{_flags('Comedy')}\n"
        f"{ITEM_OFFSET + 3}|Amélie (2001)|25-Apr-2001||http://x/3|{_flags('Comedy', 'Drama')}\n",
        encoding="latin-1",
    )
    (path / "u.data").write_text("".join(f"{u + user_offset}\t{i + ITEM_OFFSET}\t{r}\t{t + day_offset_s}\n"
                                         for u, i, r, t in RATINGS), encoding="latin-1")
    return path


@pytest.fixture
def ml_files(tmp_path: Path) -> Path:
    return write_ml_files(tmp_path)


def test_import_lands_catalogue_and_events_once_even_when_run_twice(settings, ml_files):
    args = argparse.Namespace(path=str(ml_files), limit=0)
    assert movielens.main(args) == 0
    assert movielens.main(args) == 0  # the same event ids again: the sink must keep one of each

    data = movielens.load(ml_files)
    ids = [e["event_id"] for r in data.ratings for e in movielens.rating_events(r)]
    id_list = ", ".join(f"'{i}'" for i in ids)
    count_sql = (f"SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events "
                 f"WHERE dt = '1997-09-22' AND event_id IN ({id_list})")
    deadline = time.time() + 400
    while time.time() < deadline and hive_query(settings, count_sql)[0][1] < len(ids):
        time.sleep(5)
    wait_stream_caught_up(settings)  # every re-sent copy has been through the sink
    assert hive_query(settings, count_sql)[0] == (len(ids), len(ids))

    users = {u: (g, a, o, i) for u, g, a, o, i in hive_query(
        settings, "SELECT user_id, gender, age, occupation, interests FROM users")}
    assert set(users) == {"ml1", "ml2", "ml3"}
    assert users["ml2"][:3] == ("F", 53, "other")
    items = {i: (c, k, p) for i, c, k, p in hive_query(settings, "SELECT item_id, category, keywords, price FROM items")}
    assert items[f"ml{ITEM_OFFSET + 3}"][0] == "comedy" and items[f"ml{ITEM_OFFSET + 3}"][2] is None

    kinds = dict(hive_query(settings, f"SELECT event_type, COUNT(*) FROM events WHERE dt = '1997-09-22' "
                                  f"AND event_id IN ({id_list}) GROUP BY event_type"))
    assert kinds == {"view": 6, "like": 2, "purchase": 2}


def test_bulk_load_to_hive_lands_every_event_once_even_when_run_twice(settings, tmp_path):
    """`import-movielens --to-hive`: no Kafka, no stream; straight into the partitions, exactly once."""
    files = write_ml_files(tmp_path, user_offset=100, day_offset_s=10 * 86_400)  # 1997-10-02, users ml101..ml103
    args = argparse.Namespace(path=str(files), limit=0, to_hive=True)
    assert movielens.main(args) == 0
    assert movielens.main(args) == 0  # the same event ids: all already there

    data = movielens.load(files)
    ids = [e["event_id"] for r in data.ratings for e in movielens.rating_events(r)]
    id_list = ", ".join(f"'{i}'" for i in ids)
    rows = hive_query(settings, f"SELECT COUNT(*), COUNT(DISTINCT event_id), COUNT(kafka_offset) FROM events "
                            f"WHERE dt = '1997-10-02' AND event_id IN ({id_list})")
    assert rows[0] == (len(ids), len(ids), 0)  # at once (no stream to wait for), never through Kafka
    partitions = {r[0] for r in hive_query(settings, "SHOW PARTITIONS events")}
    assert {"dt=1997-10-02/hr=22", "dt=1997-10-02/hr=23"} <= partitions, sorted(partitions)[-5:]
