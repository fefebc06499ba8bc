"""The search index of one catalogue version (serving.search_index): relevance, typos, prefixes, facets."""

from __future__ import annotations

import orjson
import pytest

from feature_store import catalogue
from serving.search_index import SearchIndex, alternatives, match_expression, one_edit, words

ROWS = [
    {"item_id": "t1", "title": "Comedy Night", "category": "Comedy", "price": 30.0, "keywords": ["live"]},
    {"item_id": "k1", "title": "Late Show", "category": "comedy", "price": 10.0, "keywords": ["comedy", "live"]},
    {"item_id": "d1", "title": "Dark Waters", "category": "drama", "price": 20.0, "keywords": ["river"]},
    {"item_id": "d2", "title": "Café Society", "category": "drama", "price": None, "keywords": ["jazz"]},
    {"item_id": "m1", "title": "Epic Music #981", "category": "music", "price": 5.0, "keywords": ["epic"]},
    {"item_id": "m2", "title": "Epic Music #9810", "category": "music", "price": 6.0, "keywords": ["new"]},
]


@pytest.fixture(scope="module")
def index():
    return SearchIndex.build("7", [orjson.dumps(r) for r in ROWS])


def ids(hits):
    return [h["item_id"] for h in hits.items]


def test_words_fold_case_and_diacritics_like_fts5():
    assert words("Café SOCIETY, #981!") == ["cafe", "society", "981"]


def test_one_edit_covers_the_four_kinds_of_typo():
    variants = one_edit("comdy")
    assert {"comedy", "cody", "comdey", "cmody", "comdy1"} <= variants  # insert, delete, swap, substitute
    assert "comdy" not in variants and "comedyy" not in variants


def test_alternatives_correct_unknown_words_but_never_numbers():
    vocab = frozenset({"comedy", "91", "981"})
    assert alternatives("comdy", vocab, last=False) == ['"comedy"']
    assert alternatives("9811", vocab, last=False) == []
    assert alternatives("com", vocab, last=True) == ['"comedy"']  # the words it begins, named
    assert alternatives("9", vocab, last=True) == []  # one letter: too short a prefix
    many = frozenset(f"w{n:03d}" for n in range(100))
    assert alternatives("w0", many, last=True) == ['"w0"*']  # too many to name: a prefix query
    assert match_expression("zzzzzz comedy", vocab) is None  # a word that matches nothing: no hits
    assert match_expression('Comedy, "co', vocab) == '("comedy") AND ("comedy")'  # quotes never reach FTS5


def test_title_match_ranks_above_a_keyword_match(index):
    assert ids(index.search("comedy"))[:2] == ["t1", "k1"]


def test_a_typo_and_a_prefix_are_tolerated(index):
    assert ids(index.search("comdy nigt")) == ["t1"]
    assert ids(index.search("dark wat")) == ["d1"]
    assert ids(index.search("cafe")) == ["d2"]


def test_a_number_is_matched_exactly_unless_it_is_the_last_word(index):
    assert ids(index.search("981 epic")) == ["m1"]
    assert set(ids(index.search("epic 981"))) == {"m1", "m2"}  # 981 as a prefix of 9810


def test_facets_count_hits_per_category_before_the_category_filter(index):
    hits = index.search("live", categories=["COMEDY"], facets=True)
    assert hits.total == 2 and hits.facets == {"comedy": 2}
    hits = index.search("epic", categories=["drama"], facets=True)
    assert hits.items == [] and hits.total == 0 and hits.facets == {"music": 2}
    assert index.search("epic").facets is None and index.search("epic").total == 2  # facets are asked for


def test_price_range_and_price_order(index):
    assert ids(index.search(None, min_price=5, max_price=20)) == ["m1", "m2", "k1", "d1"]
    assert ids(index.search(None, sort="price_desc")) == ["t1", "d1", "k1", "m2", "m1", "d2"]  # no price last
    assert ids(index.search("music", sort="price", max_price=5.5)) == ["m1"]
    assert index.search("comedy", min_price=11).total == 1


def test_pages_and_the_category_map(index):
    assert ids(index.search(None, limit=2, offset=4)) == ["t1", "d2"]
    assert index.category_of["t1"] == "comedy" and index.categories == {"comedy", "drama", "music"}
    assert index.members_of(["drama", "music"]) == {"d1", "d2", "m1", "m2"} and index.members_of(["none"]) == set()
    assert index.members_of(["music", "drama"]) is index.members_of(["drama", "music"])
    # the numbers published feeds carry: the version's categories, sorted, as the publisher numbers them
    assert index.codes_of(["music", "comedy"]) == {0, 2} and index.codes_of(["none"]) == set()
    assert index.codes == catalogue.category_codes(["Drama", "music", "comedy"])
    # what a filtered feed tests against: built once per categories, None naming an unknown one
    wanted = index.category_filter(["drama", "music"])
    assert wanted == {"allowed": {"d1", "d2", "m1", "m2"}, "codes": {1, 2}, "catalogue": index.version}
    assert index.category_filter(["drama", "music"]) is wanted
    assert index.category_filter(["drama", "none"]) is None
    assert len(index) == 6


def test_a_duplicate_document_is_indexed_once():
    twice = SearchIndex.build("1", [ROWS[0], ROWS[0]])
    assert len(twice) == 1 and twice.search("night").total == 1


def test_answers_are_cached_per_query(index):
    first = index.search("dark", limit=1)
    assert index.search("dark", limit=1) is first and index.search("dark", limit=2) is not first


def test_unknown_sort_is_refused(index):
    with pytest.raises(ValueError):
        index.search("comedy", sort="cheap")
