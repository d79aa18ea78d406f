"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against the app
served by uvicorn on a loopback port. Login link -> review queue -> approve -> the job shows approved.

Screenshots of the main pages are saved under ``out/screenshots/`` (a test artefact, git-ignored).
Without /usr/bin/chromium the test skips, unless IMAGINEBOT_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bot.config import Settings
from bot.dashboard import create_app, login_link
from tests.dashboard.conftest import GUILD, MOD, Seeded

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _need_browser() -> None:
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install playwright)"
    if missing is not None:
        if os.environ.get("IMAGINEBOT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IMAGINEBOT_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(settings: Settings, seeded: Seeded) -> Iterator[str]:
    """The dashboard on a loopback port (its own thread and event loop), stopped after the test."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the dashboard did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_login_review_approve_in_chromium(served: str, settings: Settings, seeded: Seeded) -> None:
    _need_browser()
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    link = login_link(settings, MOD, GUILD, served)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            # A CSP violation (an inline style or script slipping in) shows up as a console error.
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(link)
            page.click("#sign-in")
            page.wait_for_url(f"{served}/reviews")
            assert "lighthouse at dusk" in page.content()
            page.screenshot(path=str(SCREENSHOTS / "reviews.png"), full_page=True)

            page.click(f"#review-{seeded.flagged} >> text=Reveal and decide")
            page.wait_for_url(f"{served}/reviews/{seeded.flagged}?reveal=1")
            page.screenshot(path=str(SCREENSHOTS / "review.png"), full_page=True)
            page.click("#decide-approve")
            page.wait_for_url(f"{served}/jobs/{seeded.flagged}?decided=approve")
            assert page.inner_text("#job-state") == "approved"
            page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)

            page.goto(f"{served}/reviews")
            assert "Nothing is waiting for review" in page.content()
            for name in ("jobs", "gallery?days=365", "audit", "protected", "metrics"):
                page.goto(f"{served}/{name}")
                assert page.title().endswith("imaginebot"), name
                page.screenshot(path=str(SCREENSHOTS / f"{name.split('?')[0]}.png"), full_page=True)
            assert "review_approve" in page.goto(f"{served}/audit").text()  # type: ignore[union-attr]
        finally:
            browser.close()
    assert not problems, problems
