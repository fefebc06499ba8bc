"""Catalogue search through OpenSearch (or Elasticsearch 8), for ``search.backend: opensearch``.

The same answers as :class:`serving.search_index.SearchIndex`, asked of the cluster's index
of the catalogue version the worker serves (``<index_prefix>-<version>``, written by
:mod:`feature_store.search_engine` before that version became current), so a search
never mixes two catalogues. Relevance: ``multi_match`` of type ``bool_prefix`` over
``title^4`` and ``keywords`` with ``fuzziness: AUTO`` and every word required (typos and
a prefix of the last word, as the embedded index). Category facets come from a ``terms``
aggregation with the category filter as ``post_filter``, so they count the hits before
it, as the embedded index does.

:func:`search_body` and :func:`hits_from` are pure (unit-tested); not run against a live
cluster in this repository's tests.
"""

from __future__ import annotations

from typing import Any

import httpx

from serving.search_index import TITLE_WEIGHT, Hits

MAX_FACETS = 200
_SORTS = {
    "relevance": ["_score", {"item_id": "asc"}],
    "price": [{"price": {"order": "asc", "missing": "_last"}}, {"item_id": "asc"}],
    "price_desc": [{"price": {"order": "desc", "missing": "_last"}}, {"item_id": "asc"}],
}


def search_body(text: str | None, categories: list[str], min_price: float | None, max_price: float | None,
                sort: str | None, limit: int, offset: int, facets: bool) -> dict[str, Any]:
    """The ``_search`` request of one page."""
    sort = sort or ("relevance" if text else "price")
    filters: list[dict[str, Any]] = []
    if min_price is not None or max_price is not None:
        bounds = {k: v for k, v in (("gte", min_price), ("lte", max_price)) if v is not None}
        filters.append({"range": {"price": bounds}})
    query: dict[str, Any] = {"match_all": {}} if not text else {"multi_match": {
        "query": text, "type": "bool_prefix", "fields": [f"title^{TITLE_WEIGHT:g}", "keywords"],
        "fuzziness": "AUTO", "operator": "and"}}
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
