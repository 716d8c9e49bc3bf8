"""Open a page in headless Chromium and report what the browser saw.

Talks the Chrome DevTools protocol over ``--remote-debugging-pipe`` (JSON
messages separated by NUL bytes on file descriptors 3 and 4), so it needs no
websocket library and no free TCP port. Used by the browser test only.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]

# What the page reports about itself once loaded.
PAGE_PROBE = """JSON.stringify({
  images: Array.from(document.images).map(img => ({
    alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
    scheme: img.src.split(':')[0]})),
  resources: performance.getEntriesByType('resource').map(entry => entry.name),
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  scripts: document.scripts.length,
  title: document.title,
})"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageVisit:
    """What one page load produced: the page's own probe plus the browser's events."""

    probe: dict[str, Any]
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


class Chromium:
    """A headless Chromium driven over the DevTools pipe; use as a context manager."""

    def __init__(self, executable: str, profile_dir: Path, timeout_seconds: float = 60.0):
        self.timeout_seconds = timeout_seconds
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def attach_pipes() -> None:
            # Runs in the child: DevTools expects its pipes on fds 3 and 4. Copy them above 10
            # first, so that neither dup2 is a no-op (which would keep close-on-exec) nor
            # overwrites the other pipe.
            read_copy = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            write_copy = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(read_copy, 3)
            os.dup2(write_copy, 4)

        self.process = subprocess.Popen(
            [executable, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=attach_pipes, close_fds=False,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("Browser.close", timeout_seconds=10)
            except (OSError, TimeoutError, RuntimeError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.process.stderr:
            self.process.stderr.close()

    # -- protocol --------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout_seconds: float | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout_seconds or self.timeout_seconds)
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method} failed: {reply['error']}")
                    return reply.get("result", {})
                if "method" in reply:
                    self._events.append(reply)

    def wait_for(self, method: str, session: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            for index, event in enumerate(self._events):
                if event["method"] == method and (session is None
                                                  or event.get("sessionId") == session):
                    return self._events.pop(index)
            self._events.extend(self._read(deadline))

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("Chromium did not answer in time")
        ready, _, _ = select.select([self._from_browser], [], [], remaining)
        if not ready:
            raise TimeoutError("Chromium did not answer in time")
        chunk = os.read(self._from_browser, 1 << 20)
        if not chunk:
            raise RuntimeError(f"Chromium exited (code {self.process.poll()})")
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(message) for message in complete]

    # -- one page --------------------------------------------------------------------------

    def visit(self, url: str, *, width: int, height: int, mobile: bool = False,
              screenshot: Path | None = None, full_page: bool = False) -> PageVisit:
        """Load ``url`` in a fresh tab at the given viewport and collect what happened.

        ``screenshot`` saves a PNG of the viewport, or of the whole page with ``full_page``.
        """
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
                  session=session)
        self._events = [e for e in self._events if e.get("sessionId") != session]
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)

        reply = self.send("Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True},
                          session=session)
        visit = PageVisit(probe=json.loads(reply["result"]["value"]))
        if screenshot is not None:
            options: dict[str, Any] = {"format": "png"}
            if full_page:
                size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                options.update(captureBeyondViewport=True, clip={
                    "x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
            shot = self.send("Page.captureScreenshot", options, session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            visit.screenshot = screenshot

        # Late events (a console error after load) arrive before this reply.
        self.send("Runtime.evaluate", {"expression": "1"}, session=session)
        for event in [e for e in self._events if e.get("sessionId") == session]:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                 "assert"):
                visit.console_errors.append(json.dumps(params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                visit.console_errors.append(json.dumps(params.get("exceptionDetails", {})))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                visit.console_errors.append(params["entry"].get("text", ""))
        self.send("Target.closeTarget", {"targetId": target})
        return visit
