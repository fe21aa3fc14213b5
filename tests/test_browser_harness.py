"""Prove tests/browser.py can fail: a leak checker that never fires is a defect.

Each test builds a tiny page that breaks the SPEC's "no request leaves the
report" rule in one specific way and asserts the checker records it; the
clean page asserts it stays silent. One browser is shared by the module
because startup dominates the run time.
"""
from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.browser import BrowserResult, BrowserSession, chromium_available

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(),
                       reason="needs chromium + chromedriver + selenium (apt chromium "
                              "chromium-driver; pip selenium)"),
]

# 1x1 PNG: an inline image that must NOT count as a request.
PNG_DATA_URI = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAA"
                "DUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

CLEAN_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>Clean</title>
<style>body{{font-family:sans-serif}} .box{{background:#def;padding:1em}}</style></head>
<body><h1>Clean report</h1><div class="box">inline style</div>
<svg width="120" height="60" role="img"><rect width="120" height="60" fill="#c33"/></svg>
<img alt="dot" width="40" height="40" src="{PNG_DATA_URI}">
<script>document.body.dataset.ran = "1";</script></body></html>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserSession]:
    with BrowserSession() as session:
        yield session


def _page(tmp_path: Path, head: str = "", body: str = "") -> Path:
    path = tmp_path / "index.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
                    f"{head}</head><body><p>text</p>{body}</body></html>", encoding="utf-8")
    return path


def _check(browser: BrowserSession, page: Path) -> BrowserResult:
    return browser.check(page, page.with_suffix(".png"), width=800, height=600)


def test_a_clean_page_is_silent(browser: BrowserSession, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text(CLEAN_PAGE, encoding="utf-8")
    result = _check(browser, page)
    assert result.requests == []
    assert result.console_errors == []
    assert result.title == "Clean"
    assert result.dom_text_len > 10
    assert result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("head, body, expected", [
    pytest.param("", '<img alt="x" src="https://example.com/x.png">',
                 "https://example.com/x.png", id="b-img-https"),
    pytest.param("<style>@font-face{font-family:F;src:url(https://fonts.example/x.woff2)}"
                 "p{font-family:F}</style>", "",
                 "https://fonts.example/x.woff2", id="c-css-font-face"),
    pytest.param("", "<script>fetch('http://127.0.0.1:9/x')</script>",
                 "http://127.0.0.1:9/x", id="d-fetch"),
    # From a file:// page a protocol-relative URL resolves to file://host/...
    pytest.param("<link rel=stylesheet href=//cdn.example/x.css>", "",
                 "cdn.example/x.css", id="f-protocol-relative-link"),
    pytest.param("<style>p{background:url(http://img.example/bg.png)}</style>", "",
                 "http://img.example/bg.png", id="css-background-url"),
    pytest.param("", "<script>new WebSocket('ws://ws.example/s')</script>",
                 "ws://ws.example/s", id="websocket"),
    pytest.param("<link rel=preconnect href=https://pc.example>", "",
                 "https://pc.example/", id="preconnect-hint"),
    pytest.param("", "<script>setTimeout(() => fetch('https://late.example/'), 300)</script>",
                 "https://late.example/", id="late-fetch-after-load"),
])
def test_external_reference_is_recorded(browser: BrowserSession, tmp_path: Path,
                                        head: str, body: str, expected: str) -> None:
    result = _check(browser, _page(tmp_path, head, body))
    assert any(expected in url for url in result.requests), result.requests


def test_e_uncaught_exception_is_a_console_error(browser: BrowserSession,
                                                 tmp_path: Path) -> None:
    result = _check(browser, _page(tmp_path, body="<script>throw new Error('boom')</script>"))
    assert result.requests == []
    assert any("boom" in message for message in result.console_errors), result.console_errors


def test_session_reuse_does_not_leak_between_pages(browser: BrowserSession,
                                                   tmp_path: Path) -> None:
    dirty = _page(tmp_path, body="<img alt='x' src='https://example.com/y.png'>"
                                 "<script>throw new Error('boom')</script>")
    assert _check(browser, dirty).requests
    clean = tmp_path / "clean.html"
    clean.write_text(CLEAN_PAGE, encoding="utf-8")
    result = _check(browser, clean)
    assert (result.requests, result.console_errors) == ([], [])


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    """Counts every request that actually reaches the server."""

    hits: List[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_requests_are_recorded_but_never_leave(browser: BrowserSession, tmp_path: Path) -> None:
    """A live local server must see zero hits although the page asks for it."""
    _CountingHandler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        page = _page(tmp_path, body=f"<img alt='x' src='{base}/img.png'>"
                                    f"<iframe src='{base}/frame'></iframe>"
                                    f"<script>fetch('{base}/fetch')</script>")
        result = _check(browser, page)
    finally:
        server.shutdown()
        server.server_close()
    assert {f"{base}/img.png", f"{base}/frame", f"{base}/fetch"} <= set(result.requests)
    assert _CountingHandler.hits == []


def _live_processes_mentioning(needle: str) -> List[int]:
    """PIDs whose command line contains needle (zombies have none, so skip)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_quit_leaves_no_browser_process() -> None:
    session = BrowserSession()
    profile = session._profile_dir
    assert _live_processes_mentioning(profile), "browser should be running before quit"
    session.quit()
    deadline = time.monotonic() + 5
    while _live_processes_mentioning(profile) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_processes_mentioning(profile) == []
    assert not os.path.exists(profile)
