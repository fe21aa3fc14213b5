"""Open a built report in headless Chromium and record what it tries to reach.

Why this exists: the SPEC's rule for the report is "one HTML file, no request
leaves it, it opens from file:// offline". A static grep for ``http`` can't
prove that: fonts named in CSS, ``url()`` backgrounds, protocol-relative
``//cdn`` links, ``fetch()`` from JS, prefetch hints all only show up once a
real browser parses, lays out and runs the page. So we let Chromium do exactly
that and listen on the DevTools Protocol (CDP).

How requests are captured (and why CDP rather than ``--log-net-log``):
  * chromedriver's *performance log* (``goog:loggingPrefs`` performance=ALL)
    forwards every CDP ``Network.*`` event. ``Network.requestWillBeSent`` fires
    for every request the renderer *attempts*, before any blocking, so a
    blocked request is still recorded (it then gets ``loadingFailed`` with
    ``blockedReason=inspector``). ``Network.webSocketCreated`` covers ws/wss.
  * The net-log alternative is only flushed when the browser exits, so every
    page would need its own browser; CDP lets one session check many pages.
  * Everything except the page's own file:// URL and data:/blob:/about: URLs
    is reported, including other file:// URLs (a sibling file is not inline,
    and a ``//host/x`` link from a file:// page becomes ``file://host/x``).
  * DNS-prefetch / preconnect hints open no request, so CDP never sees them;
    we add their hrefs from the DOM so they are reported too.

How nothing can leave even when requested (two independent layers):
  * CDP ``Network.setBlockedURLs`` for http/https/ftp: the renderer fails the
    request itself (blockedReason=inspector) after recording it. Observed on
    Chromium 156: it does NOT stop WebSockets or (i)frame navigations, which
    is why the second layer is not optional.
  * Process-wide: ``--proxy-server=127.0.0.1:9`` (discard port, nothing
    listens) with ``--proxy-bypass-list=<-loopback>`` so even 127.0.0.1 goes
    to the dead proxy, plus ``--host-resolver-rules=MAP * ~NOTFOUND`` so no DNS
    lookup resolves. These also cover the browser's own traffic.

Console errors: chromedriver's *browser log* (``goog:loggingPrefs``
browser=ALL) at level SEVERE holds console.error(), uncaught exceptions,
unhandled promise rejections and failed resource loads.

Flags that keep Chromium quiet offline and usable as root in a container:
``--headless --no-sandbox`` (root can't use the sandbox) ``--disable-gpu``
``--disable-dev-shm-usage`` (small /dev/shm in containers) ``--disable-quic
--no-first-run --disable-background-networking --disable-component-update
--disable-sync --disable-extensions --disable-default-apps --disable-breakpad
--disable-crash-reporter`` (no phoning home, no update, sync or crash-upload
traffic that would pollute the log, fewer helper processes) and a fresh
``--user-data-dir`` per session (no state leaks between runs). We launch
/usr/lib/chromium/chromium directly: Debian's /usr/bin/chromium wrapper adds
its own flags and loads bundled extensions.

Selenium is given the chromedriver path explicitly and SE_OFFLINE=true so
Selenium Manager never tries to download a driver or a browser.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser",
                       "google-chrome")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")

# Schemes blocked at the CDP layer; `*` in CDP block patterns matches anything.
BLOCKED_URL_PATTERNS = ["http:*", "https:*", "ws:*", "wss:*", "ftp:*"]

# URLs that are inline by construction (or the page itself), never "requests".
IGNORED_SCHEMES = ("data:", "blob:", "about:")

# Chrome can't rasterise one texture taller than this; longer pages are cut.
MAX_SCREENSHOT_HEIGHT = 16384

QUIET_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--disable-breakpad",
    "--disable-crash-reporter",
]

NETWORK_KILL_FLAGS = [
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


@dataclass
class BrowserResult:
    """What one page did: every attempted request, every console error."""

    requests: List[str]
    console_errors: List[str]
    screenshot: Path
    title: str
    dom_text_len: int


def _which(candidates: Iterable[str], env_var: str) -> Optional[str]:
    """First existing executable; an env var override wins (for CI images)."""
    override = os.environ.get(env_var)
    for name in ([override] if override else []) + list(candidates):
        found = shutil.which(name)
        if found:
            return found
    return None


def find_chromium() -> Optional[str]:
    return _which(CHROMIUM_CANDIDATES, "REPORTGEN_CHROMIUM")


def find_chromedriver() -> Optional[str]:
    return _which(CHROMEDRIVER_CANDIDATES, "REPORTGEN_CHROMEDRIVER")


def chromium_available() -> bool:
    """True when browser, matching driver and selenium are all present.

    Tests skip rather than fail without them: the checker needs a real browser.
    """
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError:
        return False
    return find_chromium() is not None and find_chromedriver() is not None


def _chrome_options(binary: str, profile_dir: str, loopback: bool = False) -> Any:
    """``loopback``: let 127.0.0.1 through (a page served by a local http.server); every other
    host still goes to the dead proxy and resolves nowhere."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = binary
    kill = NETWORK_KILL_FLAGS
    if loopback:
        kill = [f + ", EXCLUDE 127.0.0.1" if f.startswith("--host-resolver-rules") else f
                for f in kill if not f.startswith("--proxy-bypass-list")]
    for flag in QUIET_FLAGS + kill:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return options


def _start_driver(profile_dir: str, loopback: bool = False) -> Any:
    """Start chromedriver+chromium without Selenium Manager ever going online."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    binary, driver_path = find_chromium(), find_chromedriver()
    if binary is None or driver_path is None:
        raise RuntimeError("chromium/chromedriver not found; see chromium_available()")
    service = Service(executable_path=driver_path, log_output=subprocess.DEVNULL)
    return webdriver.Chrome(service=service, options=_chrome_options(binary, profile_dir, loopback))


def _urls_from_perf_entry(entry: Dict[str, Any]) -> List[str]:
    """URLs a single performance-log entry says the page tried to reach."""
    message = json.loads(entry["message"])["message"]
    method, params = message.get("method"), message.get("params", {})
    if method == "Network.requestWillBeSent":
        return [params["request"]["url"]]
    if method in ("Network.webSocketCreated", "Network.webTransportCreated"):
        return [params["url"]]
    return []


def _is_reportable(url: str, page_url: str) -> bool:
    """Everything except the page itself and inline (data:/blob:) URLs."""
    if url.startswith(IGNORED_SCHEMES):
        return False
    return url.split("#", 1)[0] != page_url.split("#", 1)[0]


def _dedupe(items: Iterable[str]) -> List[str]:
    return list(dict.fromkeys(items))


# Resource hints open DNS/TCP connections without a request CDP could see.
_HINT_HREFS_JS = """
return Array.from(document.querySelectorAll(
  'link[rel~="dns-prefetch" i], link[rel~="preconnect" i]'
)).map(l => l.href).filter(h => h);
"""

# Resolves once web fonts referenced by laid-out text have loaded or failed.
_FONTS_READY_JS = """
const done = arguments[arguments.length - 1];
(document.fonts ? document.fonts.ready : Promise.resolve()).then(() => done(true), () => done(false));
"""


class BrowserSession:
    """One headless Chromium reused for many pages (startup is the slow part).

    Use as a context manager so the browser and driver are always quit, even
    when a check raises: leftover chromium processes pile up in CI otherwise.
    """

    def __init__(self, loopback: bool = False) -> None:
        self._profile_dir = tempfile.mkdtemp(prefix="reportgen-chromium-")
        try:
            self.driver = _start_driver(self._profile_dir, loopback)
            self._cdp("Network.enable", {})
            self._cdp("Network.setBlockedURLs", {"urls": BLOCKED_URL_PATTERNS})
        except BaseException:
            self.quit()
            raise

    def __enter__(self) -> "BrowserSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()

    def quit(self) -> None:
        driver = getattr(self, "driver", None)
        try:
            if driver is not None:
                driver.quit()
        finally:
            self.driver = None
            shutil.rmtree(self._profile_dir, ignore_errors=True)

    def _cdp(self, cmd: str, params: Dict[str, Any]) -> Dict[str, Any]:
        return self.driver.execute_cdp_cmd(cmd, params)

    def _reset(self, width: int, height: int) -> None:
        """Leave the previous page and drop its log lines before the next one."""
        self.driver.get("about:blank")
        self.driver.get_log("performance")
        self.driver.get_log("browser")
        self._cdp("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _settle(self, quiet_s: float = 0.4, max_s: float = 6.0) -> List[Dict[str, Any]]:
        """Collect perf-log entries until the page has gone quiet.

        Late requests (fonts after layout, fetch() promises, timers) arrive
        after the load event, so wait for fonts and then for a quiet window.
        """
        self.driver.execute_async_script(_FONTS_READY_JS)
        entries: List[Dict[str, Any]] = []
        deadline = time.monotonic() + max_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = self.driver.get_log("performance")
            if batch:
                entries.extend(batch)
                last_new = time.monotonic()
            elif time.monotonic() - last_new >= quiet_s:
                break
            time.sleep(0.05)
        return entries

    def _screenshot(self, path: Path, width: int, height: int) -> Path:
        """Full-page PNG: capture beyond the viewport, clipped to the content."""
        metrics = self._cdp("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {
            "x": 0, "y": 0, "scale": 1,
            "width": max(width, int(size["width"])),
            "height": min(MAX_SCREENSHOT_HEIGHT, max(height, int(size["height"]))),
        }
        shot = self._cdp("Page.captureScreenshot",
                         {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def check(self, html_path: Path, screenshot: Path, width: int = 1280,
              height: int = 2000) -> BrowserResult:
        """Open html_path from file:// and report requests, errors, screenshot."""
        return self.check_url(Path(html_path).resolve().as_uri(), screenshot, width, height)

    def check_url(self, page_url: str, screenshot: Path, width: int = 1280,
                  height: int = 2000) -> BrowserResult:
        """Open page_url (file://, or http://127.0.0.1 in a ``loopback`` session) and report
        every other URL it tries, its console errors and a screenshot."""
        self._reset(width, height)
        self.driver.get(page_url)
        entries = self._settle()
        urls = [u for e in entries for u in _urls_from_perf_entry(e)]
        urls += self.driver.execute_script(_HINT_HREFS_JS)
        errors = [e["message"] for e in self.driver.get_log("browser")
                  if e.get("level") == "SEVERE"]
        return BrowserResult(
            requests=_dedupe(u for u in urls if _is_reportable(u, page_url)),
            console_errors=errors,
            screenshot=self._screenshot(Path(screenshot), width, height),
            title=self.driver.title,
            dom_text_len=int(self.driver.execute_script(
                "return (document.body && document.body.innerText || '').length;")),
        )


ARTIFACTS_ENV = "REPORTGEN_TEST_ARTIFACTS"


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a test's screenshot ``name`` goes: never into the checkout.

    The folder $REPORTGEN_TEST_ARTIFACTS names (created; CI keeps it), else
    ``tmp_path``, the test's own pytest tmp dir.
    """
    folder = Path(os.environ[ARTIFACTS_ENV]) if os.environ.get(ARTIFACTS_ENV) else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def check_report(html_path: Path, screenshot: Path, width: int = 1280, height: int = 2000,
                 session: Optional[BrowserSession] = None) -> BrowserResult:
    """Check one report; pass a BrowserSession to reuse a browser across pages."""
    if session is not None:
        return session.check(html_path, screenshot, width, height)
    with BrowserSession() as own:
        return own.check(html_path, screenshot, width, height)
