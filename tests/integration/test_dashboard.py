"""The dashboard, MLflow's UI and Airflow's UI, checked in Debian's chromium driven by Playwright.

Against the running test stack: after a burst of simulated events the dashboard shows
non-zero events/s and the champion's version; MLflow's UI shows the champion alias and
Airflow's UI the latest successful ``feedloop_daily_retrain`` run. Screenshots go to
``<var>/screenshots/`` (``var/test/screenshots/`` for the test stack) for a person to look at.

Playwright drives the system browser (``/usr/bin/chromium``, installed by ``make install``):
it cannot download its own here.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import date

import pytest

from tests.integration.test_skeleton import DS, dag_run, day_loaded  # noqa: F401  (fixtures: the DAG run)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DAG_ID = "feedloop_daily_retrain"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def retrained(settings, request):
    """A successful feedloop_daily_retrain run and a champion: test_skeleton's, reused when it ran, else made."""
    if _state(settings) != "success":
        request.getfixturevalue("dag_run")
    assert _state(settings) == "success"


def _state(settings) -> str | None:
    from infra.airflow_client import run_state_for

    try:
        return run_state_for(settings, DAG_ID, date.fromisoformat(DS))
    except Exception:  # the DAG is not parsed yet (404): no run either
        return None


@pytest.fixture(scope="module")
def champion(settings, retrained) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    return str(client.get_model_version_by_alias(settings.mlflow.model_name, "champion").version)


@pytest.fixture(scope="module")
def latest_success(settings, retrained) -> dict:
    from infra.airflow_client import AirflowClient

    with AirflowClient.from_settings(settings) as client:
        runs = client.request("GET", f"/dags/{DAG_ID}/dagRuns",
                              params={"state": "success", "order_by": "-end_date", "limit": 1})["dag_runs"]
    assert runs, f"no successful {DAG_ID} run"
    return runs[0]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        # Debian's browser, not one of Playwright's (whose repr names its own default path)
        assert chromium.version in subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(settings):
    path = settings.var / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _page(browser, user: str, password: str):
    context = browser.new_context(http_credentials={"username": user, "password": password},
                                  viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    return context, context.new_page()


class Burst:
    """Simulated view events sent to Kafka (``rate`` a second) until stopped: the sink's rate stays non-zero
    while the page is watched, whatever the moment the browser looks."""

    def __init__(self, settings, rate: int = 100) -> None:
        from feedloop.clients import make_producer

        self.settings, self.rate, self.sent = settings, rate, 0
        self.producer = make_producer(settings)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from feedloop.events import new_event

        while not self.done.is_set():
            for n in range(self.rate // 10):
                self.producer.send(self.settings.kafka.events_topic,
                                   new_event("view", f"u{n % 50:06d}", f"i{n % 40:06d}"))
                self.sent += 1
            self.producer.flush()
            self.done.wait(0.1)

    def __enter__(self) -> Burst:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        self.producer.close()


def _wait_healthy(url: str, timeout_s: float = 120) -> None:
    from infra.health import http_ok

    deadline = time.time() + timeout_s
    while not http_ok(url):
        assert time.time() < deadline, f"{url} did not answer in {timeout_s:.0f}s"
        time.sleep(0.5)


def test_the_dashboard_shows_events_flowing_and_the_champion(settings, browser, champion, screenshots):
    base = f"http://{settings.bind_host}:{settings.dashboard.port}"
    _wait_healthy(f"{base}/healthz")
    context, page = _page(browser, settings.dashboard.admin_user, settings.dashboard.admin_password)
    try:
        page.goto(base)
        with Burst(settings) as burst:
            page.wait_for_function(
                "() => parseFloat(document.getElementById('events-per-s').textContent.replace(/,/g, '')) > 0")
            events_per_s = page.locator("#events-per-s").inner_text()
        page.wait_for_function(f"() => document.getElementById('champion-version').textContent === 'v{champion}'")
        page.wait_for_function("() => document.querySelectorAll('#health-tiles .tile').length > 0")
        page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)
    finally:
        context.close()
    assert burst.sent > 0
    assert float(events_per_s.replace(",", "")) > 0
    print(f"dashboard: {events_per_s} events/s during a burst of {burst.sent} events; champion v{champion}")


def test_the_dashboard_asks_for_a_login(settings, browser):
    # through the context's request API: a page navigation answered 401 with no credentials ends in
    # chromium's net::ERR_INVALID_AUTH_CREDENTIALS, not in a response to look at
    url = f"http://{settings.bind_host}:{settings.dashboard.port}/api/snapshot"
    context = browser.new_context()
    try:
        response = context.request.get(url)
        assert response.status == 401 and response.headers["www-authenticate"].startswith("Basic")
    finally:
        context.close()
    context, _ = _page(browser, settings.dashboard.admin_user, settings.dashboard.admin_password)
    try:
        assert context.request.get(url).ok
    finally:
        context.close()


def test_mlflow_ui_shows_the_champion_alias(settings, browser, champion, screenshots):
    context, page = _page(browser, settings.mlflow.admin_user, settings.mlflow.admin_password)
    name = settings.mlflow.model_name
    try:
        page.goto(f"http://{settings.bind_host}:{settings.mlflow.port}/#/models/{name}/versions/{champion}")
        page.wait_for_function(f"() => /Version {champion}\\b/.test(document.body.innerText)")
        page.screenshot(path=str(screenshots / "mlflow-champion.png"), full_page=True)
        # the registered model's versions table: the alias chip "@ champion" (the gate's tag value
        # "champion" alone would not do), beside the champion's version
        page.goto(f"http://{settings.bind_host}:{settings.mlflow.port}/#/models/{name}")
        page.wait_for_function(
            f"() => /@\\s*champion/.test(document.body.innerText) && /Version {champion}\\b/.test(document.body.innerText)")
        page.screenshot(path=str(screenshots / "mlflow-model.png"), full_page=True)
    finally:
        context.close()


def test_airflow_ui_shows_the_latest_successful_retrain(settings, browser, latest_success, screenshots):
    base = f"http://{settings.bind_host}:{settings.airflow.port}"
    run_id = latest_success["dag_run_id"]
    context, page = _page(browser, settings.airflow.admin_user, settings.airflow.admin_password)
    try:
        page.goto(f"{base}/auth/login")  # SimpleAuthManager's form: Username, Password, "Sign in"
        page.locator("input[name=username]").fill(settings.airflow.admin_user)
        page.locator("input[name=password]").fill(settings.airflow.admin_password)
        page.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
        page.goto(f"{base}/dags/{DAG_ID}/runs/{run_id}")
        page.wait_for_function(
            f"() => document.body.innerText.includes({run_id!r}) && /success/i.test(document.body.innerText)")
        page.screenshot(path=str(screenshots / "airflow-run.png"), full_page=True)
        page.goto(f"{base}/dags/{DAG_ID}/runs")
        page.wait_for_function("() => /success/i.test(document.body.innerText)")
        page.screenshot(path=str(screenshots / "airflow-runs.png"), full_page=True)
    finally:
        context.close()
