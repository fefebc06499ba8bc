"""The catalogue in an OpenSearch (or Elasticsearch 8) cluster, for ``search.backend: opensearch``.

Each catalogue version is its own index, ``<search.index_prefix>-<version>``, written whole
before the Redis pointer (``feedloop:catalogue``) names the version: the API queries the
index of the version it serves, so a search never mixes two catalogues, as with the
embedded index. An index lives as long as its version's items in Redis: a replaced version
stays for :data:`feature_store.catalogue.GRACE_S` (an API worker may still serve it while it
builds its index of the newer one), and its index is dropped at the first publication after
Redis let it expire. The request bodies are built by pure functions here and in
``serving/search_remote.py`` (unit-tested); ``tests/integration/test_search_opensearch.py``
runs them against a real single-node OpenSearch (``infra/opensearch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import orjson
import redis

from feature_store import catalogue

BULK_CHUNK = 2000
# deeper than the API ever pages (serving.pages.MAX_OFFSET + a page): OpenSearch refuses from + size past it
MAX_RESULT_WINDOW = 20_000
# the embedded index's words (serving.search_index.words, FTS5's unicode61): runs of letters and
# digits, lower case, diacritics folded
WORD_ANALYZER = {"type": "custom", "tokenizer": "words", "filter": ["lowercase", "asciifolding"]}


def index_name(prefix: str, version: str) -> str:
    return f"{prefix}-{version}"


def index_settings() -> dict[str, Any]:
    """Settings and mappings of a catalogue index: text fields for relevance, keyword/double for
    facets and filters. One shard (a catalogue is small); a replica where a second node exists
    (``auto_expand_replicas``: a single node stays green)."""
    return {
        "settings": {
            "number_of_shards": 1, "auto_expand_replicas": "0-1", "max_result_window": MAX_RESULT_WINDOW,
            "refresh_interval": "-1",  # written once, then refreshed by publish(): no periodic refreshes
            "analysis": {
                "tokenizer": {"words": {"type": "pattern", "pattern": "[^\\p{L}\\p{N}]+"}},
                "analyzer": {"words": WORD_ANALYZER},
                "normalizer": {"lower": {"type": "custom", "filter": ["lowercase"]}},
            },
        },
        "mappings": {"dynamic": False, "properties": {
            "item_id": {"type": "keyword"},
            "title": {"type": "text", "analyzer": "words"},
            "keywords": {"type": "text", "analyzer": "words"},
            "category": {"type": "keyword", "normalizer": "lower"},  # the API compares it lower-cased
            "price": {"type": "double"},
            "created_at": {"type": "long"},
        }},
    }


def bulk_lines(index: str, docs: Iterable[Mapping[str, Any]]) -> bytes:
    """An ``_bulk`` body indexing ``docs`` (as :func:`feature_store.catalogue.item_doc` makes them)
    under their item id, as they are (the API answers the stored document)."""
    out = bytearray()
    for doc in docs:
        out += orjson.dumps({"index": {"_index": index, "_id": doc["item_id"]}}) + b"\n"
        out += orjson.dumps(doc) + b"\n"
    return bytes(out)


def publish(url: str, prefix: str, version: str, docs: list[Mapping[str, Any]], timeout_s: float = 30.0) -> str:
    """Create ``<prefix>-<version>``, index ``docs`` into it and refresh it; returns the index name.
    Raises ``RuntimeError`` naming the first item the cluster refused."""
    index = index_name(prefix, version)
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        response = http.put(f"/{index}", json=index_settings())
        if response.status_code >= 400 and "already_exists" not in response.text:
            raise RuntimeError(f"creating {index} at {url}: {response.status_code} {response.text[:500]}")
        for start in range(0, len(docs), BULK_CHUNK):
            response = http.post("/_bulk", content=bulk_lines(index, docs[start:start + BULK_CHUNK]),
                                 headers={"Content-Type": "application/x-ndjson"})
            response.raise_for_status()
            body = response.json()
            if body.get("errors"):
                failed = next(i for i in body["items"] if i["index"].get("error"))
                raise RuntimeError(f"indexing into {index}: {failed['index']['_id']}: {failed['index']['error']}")
        http.post(f"/{index}/_refresh").raise_for_status()
        # one search before the API's first (which has search.timeout_s, 0.5 s): the first on a new index
        # loads its category ordinals and, on a fresh node, compiles the query code, ~1 s on a busy machine
        http.post(f"/{index}/_search", json=_warm_up(docs[0]["title"] if docs else "")).raise_for_status()
    return index


def _warm_up(text: str) -> dict[str, Any]:
    return {"size": 1, "query": {"multi_match": {"query": text, "fields": ["title", "keywords"], "fuzziness": 1}},
            "aggs": {"category": {"terms": {"field": "category"}}}}


def indexed_versions(url: str, prefix: str, timeout_s: float = 30.0) -> list[str]:
    """The catalogue versions the cluster holds an index of."""
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        response = http.get(f"/_cat/indices/{prefix}-*", params={"format": "json", "h": "index"})
        response.raise_for_status()  # a wildcard that matches nothing answers [] (200)
        return sorted(row["index"][len(prefix) + 1:] for row in response.json())


def drop(url: str, prefix: str, versions: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """Delete the indices of ``versions``; returns their names."""
    names = [index_name(prefix, v) for v in versions]
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        for index in names:
            response = http.delete(f"/{index}")
            if response.status_code != 404:  # gone already: another publisher dropped it
                response.raise_for_status()
    return names


def write_indexed_catalogue(client: redis.Redis, items: Iterable[Mapping[str, Any]], url: str, prefix: str,
                            version: str | None = None, log: Callable[[str], None] = print) -> str:
    """:func:`feature_store.catalogue.write_catalogue`, with the new version indexed in the
    cluster before it becomes current; then the indices of versions Redis no longer holds
    (expired after their grace) are dropped. Returns the version now current."""

    def index(new: str, docs: list) -> None:
        log(f"indexed the catalogue in {publish(url, prefix, new, docs)}")

    current = catalogue.write_catalogue(client, items, version=version, before_flip=index)
    gone = [v for v in indexed_versions(url, prefix)
            if v != current and v.isdigit() and not client.exists(catalogue.items_key(v))]
    if gone:
        log(f"dropped the indices of expired catalogues: {', '.join(drop(url, prefix, gone))}")
    return current
