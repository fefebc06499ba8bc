"""Catalogue search through OpenSearch (or Elasticsearch 8), for ``search.backend: opensearch``.

The same answers as :class:`serving.search_index.SearchIndex`, asked of the cluster's index
of the catalogue version the worker serves (``<index_prefix>-<version>``, written by
:mod:`feature_store.search_engine` before that version became current), so a search
never mixes two catalogues. Relevance, word by word as the embedded index: the query's
words (:func:`serving.search_index.words`, at most ``MAX_QUERY_WORDS``) must each match
``title^4`` or ``keywords``, a word of 3+ letters one edit away (``fuzziness: AUTO:3,100``;
numbers exactly), and the last word also as a prefix of 2+ letters (search as you type).
(A ``multi_match`` of type ``bool_prefix`` cannot do this: it ignores fuzziness on its last,
prefix word, so "midnigt comdy" found nothing, and with ``operator: and`` every word has to
be in the same field.) Category facets come from a ``terms`` aggregation with the category
filter as ``post_filter``, so they count the hits before it, as the embedded index does.

:func:`search_body` and :func:`hits_from` are pure (unit-tested);
``tests/integration/test_search_opensearch.py`` runs them against a real node.
"""

from __future__ import annotations

from typing import Any

import httpx

from serving.search_index import MAX_QUERY_WORDS, MIN_PREFIX_LEN, TITLE_WEIGHT, Hits, words

MAX_FACETS = 200
FIELDS = [f"title^{TITLE_WEIGHT:g}", "keywords"]
ONE_EDIT = "AUTO:3,100"  # one edit from 3 letters on, as the embedded index (OpenSearch's AUTO: two from 6)
_SORTS = {
    "relevance": ["_score", {"item_id": "asc"}],
    "price": [{"price": {"order": "asc", "missing": "_last"}}, {"item_id": "asc"}],
    "price_desc": [{"price": {"order": "desc", "missing": "_last"}}, {"item_id": "asc"}],
}


def word_query(word: str, last: bool) -> dict[str, Any]:
    """What one query word matches: itself in either field (a typo of it unless a number) and,
    as the last word, the words it begins."""
    match = {"multi_match": {"query": word, "fields": FIELDS, "fuzziness": "0" if word.isdigit() else ONE_EDIT}}
    if not last or len(word) < MIN_PREFIX_LEN:
        return match
    # prefix queries, not a phrase_prefix multi_match: that one expands to its first 50 words only
    prefixes = [{"prefix": {"title": {"value": word, "boost": TITLE_WEIGHT}}}, {"prefix": {"keywords": word}}]
    return {"bool": {"should": [match, *prefixes], "minimum_should_match": 1}}


def text_query(text: str) -> dict[str, Any]:
    """Every word of ``text`` must match (the API refuses a query without words)."""
    found = words(text)[:MAX_QUERY_WORDS]
    return {"bool": {"must": [word_query(w, n == len(found) - 1) for n, w in enumerate(found)]}}


def search_body(text: str | None, categories: list[str], min_price: float | None, max_price: float | None,
                sort: str | None, limit: int, offset: int, facets: bool) -> dict[str, Any]:
    """The ``_search`` request of one page."""
    sort = sort or ("relevance" if text else "price")
    filters: list[dict[str, Any]] = []
    if min_price is not None or max_price is not None:
        bounds = {k: v for k, v in (("gte", min_price), ("lte", max_price)) if v is not None}
        filters.append({"range": {"price": bounds}})
    query = text_query(text) if text else {"match_all": {}}
    body: dict[str, Any] = {
        "from": offset, "size": limit, "track_total_hits": True,
        "query": {"bool": {"must": [query], "filter": filters}},
        "sort": _SORTS[sort],
    }
    wanted = {"terms": {"category": sorted({c.lower() for c in categories})}} if categories else None
    if facets and text:
        body["aggs"] = {"category": {"terms": {"field": "category", "size": MAX_FACETS}}}
        if wanted:
            body["post_filter"] = wanted
    elif wanted:
        filters.append(wanted)
    return body


def hits_from(answer: dict[str, Any], facets: bool) -> Hits:
    """:class:`Hits` of a ``_search`` answer."""
    hits = answer["hits"]
    counts = None
    if facets and "aggregations" in answer:
        counts = {b["key"]: b["doc_count"] for b in answer["aggregations"]["category"]["buckets"]}
    return Hits([h["_source"] for h in hits["hits"]], int(hits["total"]["value"]), counts)


async def search(http: httpx.AsyncClient, index: str, text: str | None, *, categories: list[str],
                 min_price: float | None, max_price: float | None, sort: str | None, limit: int, offset: int,
                 facets: bool) -> Hits:
    """One page from the cluster's ``index``; ``httpx.HTTPError`` when it does not answer well
    (the API answers 503)."""
    response = await http.post(f"/{index}/_search", json=search_body(text, categories, min_price, max_price, sort,
                                                                     limit, offset, facets))
    response.raise_for_status()
    return hits_from(response.json(), facets)
