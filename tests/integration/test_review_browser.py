"""The review queue in a real headless browser: Debian's Chromium driven by Playwright against `llmops review
serve` running as its own process. Sign in with the API key, filter, accept one item (button), edit another and
reject a third (keyboard shortcuts), check that a token-less POST from the page is refused, then export: the
dataset holds exactly the accepted and the edited items (the edit's text), and the audit names the reviewer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.settings import Settings, get_settings
from monitoring.inference_log import open_log
from monitoring.review import ReviewQueue
from tests.review_data import seed_standard
from tests.serve_process import free_port

pytestmark = pytest.mark.slow  # a server process and a browser: `make test` (CI) runs it, `make test-fast` does not
REPO = Path(__file__).resolve().parents[2]
KEY = "review-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_or_skip() -> str:
    if CHROMIUM is None:
        pytest.skip("no chromium: `make sysdeps` installs it (infra/apt-packages.txt), or apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("no playwright: pip install -c requirements/constraints.txt -e '.[dev]'")
    return CHROMIUM


@contextlib.contextmanager
def review_server(env: dict[str, str]) -> Iterator[str]:
    """`llmops review serve` on a free port; yields its URL once it answers; stopped by its own PID."""
    import httpx2 as httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "review", "serve", "--port", str(port),
                             "--reviewer", "ana"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
                pytest.fail(f"review server did not start: {out[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def review_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, dict[str, str]]]:
    monkeypatch.setenv("LLMOPS_MODELS_DIR", str(REPO / ".llmops" / "models"))  # the base tokenizer (export)
    get_settings.cache_clear()
    env = {**os.environ, "LLMOPS_API_KEY": KEY}
    env.pop("LLMOPS_API_KEY_FILE", None)
    yield get_settings(), env


def test_review_in_chromium_then_export_holds_exactly_accepted_and_edited(review_env, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = _browser_or_skip()
    settings, env = review_env
    with open_log(settings) as ilog:
        seed_standard(ilog)
    with review_server(env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(15000)
            page.goto(url)
            page.fill("#key", "wrong")
            page.click("#sign-in")
            expect(page.locator("#login-error")).to_have_text("Wrong API key.")
            page.fill("#key", KEY)
            page.fill("#reviewer", "ana")
            page.click("#sign-in")
            expect(page.locator("#waiting")).to_have_text("6")
            expect(page.locator("article.item")).to_have_count(6)

            page.select_option("#f-version", "2")  # the filter: one item answered by version 2
            expect(page.locator("article.item")).to_have_count(1)
            expect(page.locator("article.item .prompt")).to_have_text("user: What does len() return?")
            page.select_option("#f-version", "")
            expect(page.locator("article.item")).to_have_count(6)

            item = lambda text: page.locator("article.item", has_text=text)  # noqa: E731
            item("capital of France").locator("button.accept").click()  # accept: the button
            expect(page.locator("#waiting")).to_have_text("5")

            item("days are in a week").locator(".meta").click()  # edit: select, `e`, type, Ctrl+Enter
            page.keyboard.press("e")
            editor = item("days are in a week").locator("textarea.edit-text")
            expect(editor).to_be_focused()
            editor.fill("A week has seven days.")
            editor.press("Control+Enter")
            expect(page.locator("#waiting")).to_have_text("4")

            item("primary colour").locator(".meta").click()  # reject: select, `r`
            page.keyboard.press("r")
            expect(page.locator("#waiting")).to_have_text("3")
            expect(page.locator("#flash")).to_contain_text("rejected")
            expect(page.locator("article.item")).to_have_count(3)

            forged = page.evaluate("""async () => (await fetch('/api/items/1/accept', {method: 'POST',
                headers: {'Content-Type': 'application/json'}, body: '{}'})).status""")
            assert forged == 403  # the session cookie alone does not decide anything: the CSRF token is needed

            page.select_option("#f-status", "accepted")
            expect(page.locator("article.item")).to_have_count(2)
            expect(item("days are in a week").locator(".correction")).to_have_text("A week has seven days.")
        finally:
            browser.close()

    out = tmp_path / "export.jsonl"
    from monitoring.inference_log.export import export_feedback

    with open_log(settings) as ilog:
        result = export_feedback(ilog, settings, settings.params(), since=time.time() - 3600, out=out,
                                 data_docs=False)
        trail = ReviewQueue(ilog.store).audit()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["instruction"], r["output"]) for r in rows] == [
        ("What is the capital of France?", "Paris is the capital of France."),
        ("How many days are in a week?", "A week has seven days.")]
    assert result.rows == 2
    assert [(a["action"], a["reviewer"], a["via"]) for a in trail] == [("reject", "ana", "web"),
                                                                       ("edit", "ana", "web"),
                                                                       ("accept", "ana", "web")]
    assert all(a["key_id"] and a["key_id"].startswith("k_") for a in trail)
