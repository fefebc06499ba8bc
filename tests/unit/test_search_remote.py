"""The OpenSearch backend's request and answer shapes (pure; tests/integration/test_search_opensearch.py runs
them against a real node)."""

from __future__ import annotations

import orjson

from feature_store.search_engine import bulk_lines, index_name, index_settings
from serving.search_remote import hits_from, search_body


def test_a_text_search_asks_every_word_in_either_field_with_one_typo_and_a_prefix_of_the_last():
    body = search_body("Epic comdy 981", [], None, None, None, 20, 40, False)
    epic, comdy, number = body["query"]["bool"]["must"][0]["bool"]["must"]
    assert epic == {"multi_match": {"query": "epic", "fields": ["title^4", "keywords"], "fuzziness": "AUTO:3,100"}}
    assert comdy["multi_match"]["fuzziness"] == "AUTO:3,100"
    # the last word: exactly (numbers are never corrected) or as the beginning of a word, in either field
    assert number["bool"]["should"] == [
        {"multi_match": {"query": "981", "fields": ["title^4", "keywords"], "fuzziness": "0"}},
        {"prefix": {"title": {"value": "981", "boost": 4.0}}}, {"prefix": {"keywords": "981"}}]
    assert number["bool"]["minimum_should_match"] == 1
    assert body["from"] == 40 and body["size"] == 20 and body["sort"][0] == "_score"
    assert "aggs" not in body and "post_filter" not in body


def test_facets_count_before_the_category_filter_and_prices_bound():
    body = search_body("live", ["Comedy", "drama"], 5.0, None, "price_desc", 10, 0, True)
    assert body["post_filter"] == {"terms": {"category": ["comedy", "drama"]}}
    assert body["query"]["bool"]["filter"] == [{"range": {"price": {"gte": 5.0}}}]
    assert body["aggs"]["category"]["terms"]["field"] == "category"
    assert body["sort"][0] == {"price": {"order": "desc", "missing": "_last"}}
    browse = search_body(None, ["comedy"], None, 9.0, None, 10, 0, True)
    assert browse["query"]["bool"]["must"] == [{"match_all": {}}] and "aggs" not in browse
    assert {"terms": {"category": ["comedy"]}} in browse["query"]["bool"]["filter"]
    assert browse["sort"][0] == {"price": {"order": "asc", "missing": "_last"}}


def test_hits_from_an_answer():
    answer = {"hits": {"total": {"value": 7, "relation": "eq"}, "hits": [{"_source": {"item_id": "a"}}]},
              "aggregations": {"category": {"buckets": [{"key": "comedy", "doc_count": 7}]}}}
    hits = hits_from(answer, True)
    assert hits.items == [{"item_id": "a"}] and hits.total == 7 and hits.facets == {"comedy": 7}
    assert hits_from(answer, False).facets is None


def test_each_catalogue_version_is_its_own_index():
    assert index_name("feedloop-catalogue", "1767225600000") == "feedloop-catalogue-1767225600000"
    lines = bulk_lines("x-1", [{"item_id": "i1", "title": "T", "category": "Comedy", "price": None,
                                "keywords": [], "created_at": None}]).splitlines()
    assert orjson.loads(lines[0]) == {"index": {"_index": "x-1", "_id": "i1"}}
    assert orjson.loads(lines[1])["category"] == "Comedy"  # answered as stored; the index lower-cases it
    assert index_settings()["mappings"]["properties"]["category"] == {"type": "keyword", "normalizer": "lower"}
