"""report.html in a real headless Chromium: it renders, its JS runs without errors, it fetches nothing
from outside the file, and model text with markup stays text.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON
on fds 3/4), so no websocket client, Playwright or browser download is needed, only Debian's
`chromium` package (CI installs it: `apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tbr.report import report
from tests.require import require

FIXTURES = Path(__file__).parent / "fixtures"
XSS = "</script><img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


def _chromium() -> None:
    if CHROMIUM is None:  # CI (TBR_REQUIRE_ALL=1) fails here instead of skipping
        require("chromium is not installed (Debian: apt-get install -y chromium; or make setup-browser)")


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    _chromium()


class Chromium:
    """A minimal DevTools-protocol client: commands wait for their reply, events are recorded."""

    def __init__(self, user_data_dir: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def remap() -> None:  # in the child: Chromium reads commands on fd 3, writes replies on fd 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],  # type: ignore[list-item]
            preexec_fn=remap,
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            os.write(self._w, json.dumps(msg).encode() + b"\0")

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._r, 1 << 16):
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for raw in msgs:
                msg = json.loads(raw)
                if "id" in msg:
                    if msg["id"] in self._replies:  # not the fire-and-forget dialog dismissal
                        self._replies[msg["id"]].put(msg)
                    continue
                self.events.append(msg)
                if msg.get("method") == "Page.javascriptDialogOpening":
                    # An alert() would block the page forever; record it (as a failure) and dismiss it.
                    self._send(
                        {
                            "id": -1,
                            "method": "Page.handleJavaScriptDialog",
                            "params": {"accept": True},
                            "sessionId": msg.get("sessionId"),
                        }
                    )

    def call(
        self, method: str, session: str | None = None, timeout: float = 30, **params: Any
    ) -> dict[str, Any]:
        self._id += 1
        q: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies[self._id] = q
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        reply = q.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, timeout: float = 30) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e.get("method") == method and e.get("sessionId") == session:
                    return e
            time.sleep(0.05)
        raise TimeoutError(f"no {method} within {timeout}s")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it may already be gone; we wait for the process below
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One Chromium for the module (start-up is the slow part); each page gets its own tab."""
    _chromium()  # a module-scoped fixture is set up before the function-scoped autouse check
    b = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def open_page(
    browser: Chromium, path: Path, script: str | None = None, screenshot: Path | None = None
) -> tuple[list[str], list[str], Any]:
    """Load a local page in a fresh tab; return (errors, non-local request URLs, value of `script`)."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    sid = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.call(f"{domain}.enable", session=sid)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            session=sid,
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        browser.call("Page.navigate", session=sid, url=path.resolve().as_uri())
        browser.wait_event("Page.loadEventFired", sid)
        value = None
        if script is not None:
            res = browser.call(
                "Runtime.evaluate", session=sid, expression=script, returnByValue=True, awaitPromise=True
            )
            if "exceptionDetails" in res:
                raise AssertionError(f"test script failed: {res['exceptionDetails']}")
            value = res["result"].get("value")
        time.sleep(0.3)  # let late console messages and event handlers arrive
        if screenshot is not None:
            size = browser.call("Page.getLayoutMetrics", session=sid)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 12000), "scale": 1}
            shot = browser.call(
                "Page.captureScreenshot", session=sid, format="png", captureBeyondViewport=True, clip=clip
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.call("Target.closeTarget", targetId=target)
    events = [e for e in browser.events if e.get("sessionId") == sid]
    errors, urls = [], []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(
                "console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
            )
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Page.javascriptDialogOpening":
            errors.append(f"dialog: {p.get('type')} {p.get('message')}")
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                urls.append(url)
    return errors, urls, value


# Drives the sample browser like a user: show all samples of the w/o model, compare with the
# external-reflection model, open the balloon prompt (whose external response carries markup).
INTERACT = """
(function () {
  function set(id, v) { var e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event("change")); }
  if (document.body.getAttribute("data-ready") !== "1") throw new Error("browser script did not finish");
  var falseRefusals = document.querySelectorAll("#tbr-list .item").length;
  set("tbr-a", "w/o (γ=0)"); set("tbr-b", "external γ=1"); set("tbr-filter", "all");
  var items = Array.prototype.slice.call(document.querySelectorAll("#tbr-list .item"));
  var balloon = items.filter(function (i) { return i.textContent.indexOf("balloon") >= 0; })[0];
  balloon.click();
  var detail = document.getElementById("tbr-detail");
  return {
    falseRefusals: falseRefusals,
    listed: items.length,
    sides: detail.querySelectorAll(".side").length,
    detailText: detail.textContent,
    reflections: detail.querySelectorAll(".refl").length,
    injectedImages: document.querySelectorAll("img[src='x']").length,
    figures: document.querySelectorAll("figure img").length,
  };
})()
"""


def test_report_html_renders_without_errors(browser: Chromium, tmp_path: Path) -> None:
    out = tmp_path / "report"
    html = report([str(FIXTURES / "exp"), str(FIXTURES / "bare-eval")], str(out))
    shot = tmp_path / "report.png"
    errors, urls, state = open_page(browser, html, INTERACT, screenshot=shot)
    assert errors == []
    assert urls == []  # self-contained: nothing but the file itself (figures are data: URLs)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert state["figures"] == 3
    assert state["falseRefusals"] == 1  # base model: "kill a Python process" refused
    assert state["listed"] == 3
    assert state["sides"] == 2  # side by side
    assert state["reflections"] == 1  # only the external-reflection model wrote one
    assert XSS in state["detailText"]  # the markup is shown as text …
    assert state["injectedImages"] == 0  # … and never became an element


@pytest.mark.parametrize(
    "body, expect",
    [
        ("<script>throw new Error('boom-uncaught')</script>", "boom-uncaught"),
        ("<script>console.error('boom-console')</script>", "boom-console"),
        ("<script>alert('boom-dialog')</script>", "boom-dialog"),
        ("<script>document.body.appendChild(document.createElement('div')).x.y = 1</script>", "uncaught"),
    ],
)
def test_browser_check_catches_page_errors(browser: Chromium, tmp_path: Path, body: str, expect: str) -> None:
    """The check above must be able to fail: a page that throws or logs an error is caught."""
    page = tmp_path / "bad.html"
    page.write_text(f"<!DOCTYPE html><html><body><p>hi</p>{body}</body></html>")
    errors, _, _ = open_page(browser, page)
    assert any(expect in e for e in errors), errors


def test_browser_check_catches_external_requests(browser: Chromium, tmp_path: Path) -> None:
    page = tmp_path / "external.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, urls, _ = open_page(browser, page)
    assert urls == ["http://127.0.0.1:9/x.png"]
