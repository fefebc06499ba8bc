"""ML-100K import: parsing, interests, ratings as events (on a tiny fixture in tmp_path)."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from feedloop.events import Rejection, validate
from sources import movielens as ml

# The real data set is never copied into the repo (its licence forbids it): read it where it lies.
REAL_DATA = Path(os.environ.get("ML100K_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k")
GENRES = ["unknown", "Action", "Comedy", "Drama", "Sci-Fi"]


def flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


@pytest.fixture
def ml_dir(tmp_path: Path) -> Path:
    """Five genres, three users, four items, eight ratings, in the ML-100K layout (latin-1)."""
    (tmp_path / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n", encoding="latin-1")
    (tmp_path / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n", encoding="latin-1")
    (tmp_path / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{flags('Comedy')}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x/2|{flags('Action', 'Sci-Fi')}\n"
        f"3|Amélie (2001)|25-Apr-2001||http://x/3|{flags('Comedy', 'Drama')}\n"
        f"4|unknown|||http://x/4|{flags('unknown')}\n",
        encoding="latin-1",
    )
    ratings = [(1, 1, 5, 881250949), (1, 3, 4, 881250950), (1, 2, 2, 881250000), (2, 2, 5, 891717742),
               (2, 1, 4, 891717700), (2, 3, 4, 891717743), (3, 4, 3, 878887116), (3, 3, 1, 878887117)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings), encoding="latin-1")
    return tmp_path


def test_items_take_first_genre_as_category_and_all_as_keywords(ml_dir):
    data = ml.load(ml_dir)
    items = {i.item_id: i for i in data.items}
    assert items["ml2"].category == "action" and items["ml2"].keywords == ["action", "sci-fi"]
    assert items["ml3"].title == "Amélie (2001)"  # latin-1 decoded
    assert items["ml3"].created_at == 988156800000  # 2001-04-25T00:00Z
    assert items["ml4"].created_at is None and items["ml4"].category == "unknown"
    assert all(i.price is None for i in data.items)


def test_users_keep_profile_and_get_top_rated_genres(ml_dir):
    data = ml.load(ml_dir)
    users = {u.user_id: u for u in data.users}
    assert (users["ml2"].gender, users["ml2"].age, users["ml2"].occupation) == ("F", 53, "other")
    # ml1 liked comedy twice (items 1 and 3), drama once; the 2 for item 2 counts for nothing
    assert users["ml1"].interests == ["comedy", "drama"]
    # ml2 liked comedy twice; action, sci-fi (mean 5) and drama (mean 4) once each
    assert users["ml2"].interests == ["comedy", "action", "sci-fi"]
    assert users["ml3"].interests == []  # no rating of 4 or more
    assert data.user_created_at["ml1"] == 881250000 * 1000


def test_a_rating_is_a_view_plus_like_for_4_and_purchase_for_5():
    def types(rating: int) -> list[str]:
        return [e["event_type"] for e in ml.rating_events(ml.Rating("ml1", "ml9", rating, 881250949000))]

    assert [types(r) for r in range(1, 6)] == [["view"], ["view"], ["view"], ["view", "like"], ["view", "purchase"]]


def test_events_keep_original_time_and_have_deterministic_ids(ml_dir):
    data = ml.load(ml_dir)
    events = [e for r in data.ratings for e in ml.rating_events(r)]
    again = [e for r in ml.load(ml_dir).ratings for e in ml.rating_events(r)]
    assert [e["event_id"] for e in events] == [e["event_id"] for e in again]
    assert len({e["event_id"] for e in events}) == len(events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)  # sent in time order
    first = next(e for e in events if e["user_id"] == "ml3" and e["item_id"] == "ml4")
    assert first["ts"] == 878887116000 and first["rating"] == 3
    assert Counter(e["event_type"] for e in events) == {"view": 8, "like": 3, "purchase": 2}


def test_every_event_passes_the_validator_and_keeps_the_rating(ml_dir):
    for rating in ml.load(ml_dir).ratings:
        for event in ml.rating_events(rating):
            result = validate(json.dumps(event).encode())
            assert not isinstance(result, Rejection), result
            assert result["extra"] == {"rating": str(rating.rating), "source": ml.SOURCE}


def test_limit_takes_the_first_ratings_of_the_file(ml_dir):
    data = ml.load(ml_dir, limit=3)
    assert {(r.user, r.item) for r in data.ratings} == {("ml1", "ml1"), ("ml1", "ml3"), ("ml1", "ml2")}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("u.data", "1\t1\t6\t881250949\n", "rating must be 1..5"),
        ("u.data", "1,1,5,881250949\n", "u.data:1"),
        ("u.data", "9\t1\t5\t881250949\n", "unknown user ml9"),
        ("u.user", "1|x|M|technician|85711\n", "u.user:1"),
        ("u.item", "1|Toy Story (1995)|01-Jan-1995||http://x/1|0|1\n", "u.item:1: expected 10 fields"),
        ("u.item", f"1|Toy Story|31-Foo-1995||http://x/1|{flags('Comedy')}\n", "bad release date"),
    ],
)
def test_bad_files_are_named_with_the_line(ml_dir, name, content, message):
    (ml_dir / name).write_text(content, encoding="latin-1")
    with pytest.raises(ml.MovieLensError, match=message):
        ml.load(ml_dir)


def test_missing_directory_or_file_is_named(ml_dir, tmp_path):
    with pytest.raises(ml.MovieLensError, match="not a directory"):
        ml.load(tmp_path / "nope")
    (ml_dir / "u.genre").unlink()
    with pytest.raises(ml.MovieLensError, match="u.genre not found"):
        ml.load(ml_dir)


@pytest.mark.skipif(not (REAL_DATA / "u.data").exists(), reason=f"ML-100K not present at {REAL_DATA}")
def test_the_real_ml_100k_files_load():
    data = ml.load(REAL_DATA)
    assert (len(data.users), len(data.items), len(data.ratings)) == (943, 1682, 100_000)
    events = [e for r in data.ratings[:5000] for e in ml.rating_events(r)]
    assert not any(isinstance(validate(json.dumps(e).encode()), Rejection) for e in events)
