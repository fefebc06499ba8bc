"""Catalogue search with ``search.backend: opensearch``, against a real OpenSearch node and the real app: no mocks.

The module starts a node of its own (``bench.private.PrivateOpenSearch``: the project's launcher,
``infra/opensearch``, on free ports, state in a temp dir) and a redis-server of its own, so it needs
neither the test stack nor its lock. Publication goes through
``feature_store.search_engine.write_indexed_catalogue`` (what ``models.publish`` runs), search
through ``GET /v1/items``. The same checks as the embedded index's in ``test_api_filters.py``, plus
the index lifecycle and an unreachable node. The jars come from ``make install``: missing ones fail
the module (they are a locked dependency), they do not skip it.
"""

from __future__ import annotations

import threading
import time
import warnings

import httpx
import pytest

from bench.private import PrivateOpenSearch, PrivateRedis, free_port
from feature_store import catalogue as catalogue_store
from feature_store import search_engine
from feedloop.settings import load_settings
from serving.app import create_app
from serving.pages import encode_cursor

pytestmark = pytest.mark.integration

PREFIX = "feedloop-catalogue"
TIMEOUT_S = 2.0  # the first searches of a fresh node compile their code paths: above the 0.5 s default here


def search_settings(url: str):
    settings = load_settings()
    search = settings.search.model_copy(update={"backend": "opensearch", "url": url, "timeout_s": TIMEOUT_S,
                                                "index_prefix": PREFIX})
    return settings.model_copy(update={"search": search})


def api_client(settings, redis_port: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette asks for httpx2; httpx works
        from fastapi.testclient import TestClient
    redis_settings = settings.redis.model_copy(update={"port": redis_port, "password": ""})
    return TestClient(create_app(settings.model_copy(update={"redis": redis_settings})))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = PrivateOpenSearch(tmp_path_factory.mktemp("opensearch")).start(wait=False)
    try:
        node.wait()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def private(node, tmp_path_factory):
    """(redis client, API TestClient over the node)."""
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    client = server.start()
    try:
        with api_client(search_settings(node.url), server.port) as api:
            yield client, api
    finally:
        server.stop()


def publish(node, client, rows, version=None) -> str:
    """Publish ``rows`` as ``version`` (default: a version newer than the current one, which the burst
    below sets ahead of the clock)."""
    current = client.get(catalogue_store.pointer_key())
    version = version or str(max(int(time.time() * 1000), int(current or 0) + 1))
    return search_engine.write_indexed_catalogue(client, rows, node.url, PREFIX, version=version, log=lambda m: None)


def wait_served(api, version: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (body := api.get("/v1/items", params={"limit": 1}).json()).get("catalogue_version") != version:
        assert time.monotonic() < deadline, f"catalogue {version} not served after {timeout_s}s: {body}"
        time.sleep(0.05)


def _row(item_id: str, category: str, title: str = "", keywords=(), price: float = 10.0) -> dict:
    return {"item_id": item_id, "title": title or f"Item {item_id}", "category": category, "price": price,
            "keywords": list(keywords), "created_at": 1767225600000}


def _ids(body):
    return [row["item_id"] for row in body["items"]]


def test_search_finds_a_misspelt_title_ranks_the_title_match_first_and_facets_and_prices_work(node, private):
    client, api = private
    rows = [_row("k1", "Comedy", "Late Show", ["comedy", "live"], 5.0),
            _row("t1", "comedy", "Midnight Comedy Club", ["live"], 30.0),
            _row("x1", "drama", "Quiet River", ["slow"], 12.0)]
    version = publish(node, client, rows + [_row(f"c{n}", "comedy") for n in range(30)]
                      + [_row(f"d{n}", "drama") for n in range(30)])
    wait_served(api, version)
    body = api.get("/v1/items", params={"q": "midnigt comdy"}).json()
    assert _ids(body) == ["t1"] and body["catalogue_version"] == version
    assert body["items"][0] == rows[1]  # the document as published
    assert _ids(api.get("/v1/items", params={"q": "comedy"}).json()) == ["t1", "k1"]  # title first, though dearer
    assert _ids(api.get("/v1/items", params={"q": "comedy", "sort": "price"}).json()) == ["k1", "t1"]
    assert _ids(api.get("/v1/items", params={"q": "quiet riv"}).json()) == ["x1"]  # prefix of the last word
    body = api.get("/v1/items", params={"q": "live", "category": "drama", "facets": "category"}).json()
    assert body["items"] == [] and body["facets"] == {"category": {"comedy": 2}}  # counted before the filter
    body = api.get("/v1/items", params={"q": "live", "category": "COMEDY", "facets": "category"}).json()
    assert sorted(_ids(body)) == ["k1", "t1"] and body["facets"] == {"category": {"comedy": 2}}
    body = api.get("/v1/items", params={"q": "comedy live", "min_price": 10, "max_price": 40}).json()
    assert _ids(body) == ["t1"] and body["total"] == 1
    body = api.get("/v1/items", params={"category": "drama", "min_price": 10, "max_price": 12,
                                        "sort": "price_desc", "limit": 3}).json()
    assert _ids(body) == ["x1", "d0", "d1"] and body["total"] == 31 and body["next_cursor"]
    rest = api.get("/v1/items", params={"category": "drama", "min_price": 10, "max_price": 12,
                                        "sort": "price_desc", "limit": 50, "cursor": body["next_cursor"]}).json()
    assert len(rest["items"]) == 28 and rest["next_cursor"] is None and not set(_ids(rest)) & set(_ids(body))


def test_a_catalogue_publication_during_a_search_burst_never_yields_a_mixed_page(node, private):
    client, api = private
    versions = [str(int(time.time() * 1000) + 10_000 * n) for n in range(1, 5)]
    failures = []

    def publish_all():
        try:
            for v in versions:  # each version's items are named after it
                started = time.monotonic()
                publish(node, client, [_row(f"{v}-{n}", "comedy", f"Widget {n}", ["gadget"]) for n in range(2000)],
                        version=v)
                print(f"published {v} in {time.monotonic() - started:.2f}s", flush=True)
                time.sleep(0.2)
        except Exception as exc:  # seen by the reader's loop, which then fails
            failures.append(exc)

    writer = threading.Thread(target=publish_all)
    writer.start()
    seen, pages = set(), 0
    deadline = time.monotonic() + 60
    while writer.is_alive() or versions[-1] not in seen:
        assert not failures, failures
        assert time.monotonic() < deadline, f"the last catalogue was not served in time; served: {sorted(seen)}"
        response = api.get("/v1/items", params={"q": "widgte gadget", "limit": 50})
        assert response.status_code == 200, response.text  # the index of a served version is never dropped
        body = response.json()
        pages += 1
        version = body["catalogue_version"]
        if version in versions:
            seen.add(version)
            assert len(body["items"]) == 50 and body["total"] == 2000
            assert all(i.startswith(f"{version}-") for i in _ids(body)), (version, _ids(body)[:5])
        else:
            assert body["items"] == [] or all(not i.startswith(tuple(versions)) for i in _ids(body))
    writer.join()
    assert len(seen) >= 2, f"only {seen} seen over {pages} pages: the test did not see a publication"
    # the deepest page the API serves (OpenSearch refuses from + size past the index's max_result_window)
    deep = api.get("/v1/items", params={"q": "widget", "limit": 100,
                                        "cursor": encode_cursor(f"items@{versions[-1]}", 10_000)})
    assert deep.status_code == 200 and deep.json()["items"] == [] and deep.json()["total"] == 2000, deep.text
    # every replaced version keeps its index while Redis keeps it (its grace); once expired there, the next
    # publication drops its index
    held = search_engine.indexed_versions(node.url, PREFIX)
    assert set(versions) <= set(held)
    for v in versions[:3]:
        client.delete(catalogue_store.items_key(v))
    last = publish(node, client, [_row("z1", "music", "Last One")])
    left = search_engine.indexed_versions(node.url, PREFIX)
    assert last not in versions and not set(versions[:3]) & set(left) and {*versions[3:], last} <= set(left)


def test_opensearch_down_gives_a_fast_503_and_search_comes_back(node, private):
    client, api = private
    version = publish(node, client, [_row("a1", "comedy", "Alpha Show")])
    wait_served(api, version)
    node.pause()  # hangs every request: the API must give up after search.timeout_s
    try:
        started = time.monotonic()
        response = api.get("/v1/items", params={"q": "alpha"})
        elapsed = time.monotonic() - started
    finally:
        node.resume()
    assert response.status_code == 503 and response.json()["error"] == "search unavailable", response.text
    assert elapsed < TIMEOUT_S + 1.5, elapsed
    assert _ids(api.get("/v1/items", params={"q": "alpha"}).json()) == ["a1"]
    # nothing listening at all: refused at once
    redis_port = client.connection_pool.connection_kwargs["port"]
    with api_client(search_settings(f"http://127.0.0.1:{free_port()}"), redis_port) as dead:
        started = time.monotonic()
        response = dead.get("/v1/items", params={"q": "alpha"})
        assert response.status_code == 503 and time.monotonic() - started < 1.0, response.text
    with pytest.raises(httpx.HTTPError):  # publication cannot go on without the cluster either ...
        search_engine.write_indexed_catalogue(client, [_row("b1", "comedy")], f"http://127.0.0.1:{free_port()}",
                                              PREFIX, version="9" * 13, log=lambda m: None)
    # ... and leaves nothing behind: the version never became current, and its keys are gone
    assert client.get(catalogue_store.pointer_key()) == version
    assert not client.keys("*9999999999999*")
