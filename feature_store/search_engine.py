"""The catalogue in an OpenSearch (or Elasticsearch 8) cluster, for ``search.backend: opensearch``.

Each catalogue version is its own index, ``<search.index_prefix>-<version>``, written whole
before the Redis pointer (``feedloop:catalogue``) names the version: the API queries the
index of the version it serves, so a search never mixes two catalogues, as with the
embedded index. The request bodies are built by pure functions here and in
``serving/search_remote.py`` (unit-tested); the HTTP calls are thin. Not run against a
live cluster in this repository's tests: none runs on the development machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import orjson

BULK_CHUNK = 2000


def index_name(prefix: str, version: str) -> str:
    return f"{prefix}-{version}"


def index_settings() -> dict[str, Any]:
    """Mappings of a catalogue index: text fields for relevance, keyword/double for facets."""
    return {
        "settings": {"number_of_shards": 1},
        "mappings": {"dynamic": False, "properties": {
            "item_id": {"type": "keyword"},
            "title": {"type": "text"},
            "keywords": {"type": "text"},
            "category": {"type": "keyword"},  # lower case, as the API compares it
            "price": {"type": "double"},
            "created_at": {"type": "long"},
        }},
    }


def bulk_lines(index: str, docs: Iterable[Mapping[str, Any]]) -> bytes:
    """An ``_bulk`` body indexing ``docs`` (as :func:`feature_store.catalogue.item_doc` makes them)
    under their item id; the category lower-cased in the indexed copy."""
    out = bytearray()
    for doc in docs:
        out += orjson.dumps({"index": {"_index": index, "_id": doc["item_id"]}}) + b"\n"
        out += orjson.dumps({**doc, "category": str(doc["category"]).lower()}) + b"\n"
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
    return index


def drop_old(url: str, prefix: str, keep: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """Delete the catalogue indices of other versions than ``keep`` (publication keeps the new and
    the replaced one, for searches and pages still on it); returns their names."""
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        response = http.get(f"/_cat/indices/{prefix}-*", params={"format": "json", "h": "index"})
        if response.status_code == 404:
            return []
        response.raise_for_status()
        wanted = {index_name(prefix, v) for v in keep}
        old = [row["index"] for row in response.json() if row["index"] not in wanted]
        for index in old:
            http.delete(f"/{index}")
    return old
