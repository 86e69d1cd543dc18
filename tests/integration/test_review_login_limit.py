"""The review page's key cannot be guessed at speed: wrong keys (sign-in form and bearer calls alike) are limited per
client address, then answered 429 with Retry-After, and while refused even the right key is not compared (no
oracle). Another address and an existing session are unaffected; after Retry-After the right key signs in again.
Real HTTP against `llmops review serve` (the browser test's server fixture), plus the bucket on a fake clock."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.review.sessions import COOKIE
from serving.http.throttle import FailureLimit
from tests.integration.test_review_browser import KEY, REPO, review_env, review_server  # noqa: F401

BURST, WINDOW = 3, 20.0  # one try back every 6.7 s: slow enough that a loaded host's request times do not refill


@pytest.fixture
def limited_env(review_env, tmp_path: Path) -> Iterator[dict[str, str]]:  # noqa: F811
    """The server reads a project whose params.yaml sets a small limit (the state dir is the test's)."""
    _, env = review_env
    project = tmp_path / "project"
    project.mkdir()
    text = (REPO / "params.yaml").read_text()
    text = re.sub(r"(?m)^(  login_failures:) \d+", rf"\1 {BURST}", text)
    text = re.sub(r"(?m)^(  login_window_s:) \d+", rf"\1 {WINDOW:g}", text)
    (project / "params.yaml").write_text(text)
    yield {**env, "LLMOPS_PROJECT_DIR": str(project)}


@pytest.mark.slow
def test_wrong_keys_are_limited_per_address_over_real_http(limited_env: dict[str, str]) -> None:
    import httpx2 as httpx

    with review_server(limited_env) as url:
        def client(address: str) -> httpx.Client:
            return httpx.Client(base_url=url, headers={"Origin": url}, follow_redirects=False, timeout=30,
                                transport=httpx.HTTPTransport(local_address=address))

        a, b = client("127.0.0.1"), client("127.0.0.2")  # two client addresses on the loopback
        login = lambda c, key: c.post("/login", data={"key": key, "reviewer": "ana"})  # noqa: E731
        assert login(a, "guess-0").headers["location"] == "/?error=key"
        signed = login(a, KEY)  # a right key costs nothing
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        assert COOKIE in a.cookies  # the client keeps the session cookie
        codes = [login(a, f"guess-{i}").status_code for i in range(1, 5)]
        assert codes == [303, 303, 429, 429], codes  # BURST wrong keys in all, then refused
        refused = login(a, KEY)  # while refused the right key is not compared: no oracle
        assert refused.status_code == 429 and "too many" in refused.json()["error"]["message"]
        wait = int(refused.headers["Retry-After"])
        assert 1 <= wait <= WINDOW / BURST + 1
        page = a.post("/login", data={"key": KEY, "reviewer": "ana"}, headers={"Accept": "text/html"})
        assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")  # a browser's form
        assert "Wait" in page.text and page.headers["Retry-After"]  # says how long, not raw JSON
        assert a.get("/api/items", headers={"Authorization": "Bearer guess-9"}).status_code == 429  # the API too
        assert a.get("/api/items", headers={"Authorization": f"Bearer {KEY}"}).status_code == 429
        assert a.get("/api/items").status_code == 200  # its session (cookie, no key check) goes on working

        assert b.get("/api/items", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200  # per address
        assert login(b, KEY).status_code == 303
        time.sleep(wait + 0.5)
        again = login(a, KEY)
        assert again.status_code == 303 and again.headers["location"] == "/"


def test_bucket_refills_gives_back_and_stays_bounded() -> None:
    now = [0.0]
    limit = FailureLimit(2, 10.0, clock=lambda: now[0], max_clients=3)
    assert [limit.take("x"), limit.take("x")] == [0, 0]
    assert limit.take("x") == 5  # one token back every 5 s
    now[0] = 4.0
    assert limit.take("x") == 1
    now[0] = 5.0
    assert limit.take("x") == 0
    limit.give_back("x")  # a right key: not counted
    assert limit.take("x") == 0 and limit.take("x") == 5
    for i in range(10):
        limit.take(f"other-{i}")
    assert len(limit._buckets) <= 3 and limit.take("y") == 0  # many addresses cannot grow it without bound
