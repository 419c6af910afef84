"""Test helper: open an HTML file in headless Chromium over the DevTools protocol; report images, errors, screenshot."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import websocket  # websocket-client: the DevTools protocol speaks JSON over a websocket
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",  # any free port; Chromium writes it to <user-data-dir>/DevToolsActivePort
)
_IMAGES_JS = """(() => {
  const images = Array.from(document.images);
  return {images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
          title: document.title};
})()"""


@dataclass(frozen=True)
class PageReport:
    """What a page did: its <img> count, how many loaded, console errors and exceptions, a PNG screenshot."""

    title: str
    images: int
    images_loaded: int
    errors: list[str]
    screenshot_png: bytes


class _Cdp:
    """One DevTools websocket: `call` waits for its reply and keeps the events that arrive meanwhile."""

    def __init__(self, url: str, deadline: float) -> None:
        self.deadline = deadline
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        # Chromium refuses websocket clients that send an Origin header unless --remote-allow-origins names it.
        self._ws = websocket.create_connection(url, timeout=self._left(), suppress_origin=True)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("chromium: the page did not finish within the time limit")
        return left

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        self._ws.settimeout(timeout_s)
        try:
            return json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException as error:
            raise TimeoutError("chromium: the page did not finish within render's timeout_s") from error

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send `method` and return its result; raises RuntimeError with Chromium's error message."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = self._receive(self._left())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"chromium: {method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The params of the first event `method` (already received or the next to arrive)."""
        while not any(e["method"] == method for e in self.events):
            message = self._receive(self._left())
            if "method" in message:
                self.events.append(message)
        return next(e for e in self.events if e["method"] == method)["params"]

    def drain(self, seconds: float) -> None:
        """Keep the events that arrive within `seconds` (late console messages)."""
        end = min(time.monotonic() + seconds, self.deadline)
        while (left := end - time.monotonic()) > 0:
            try:
                message = self._receive(left)
            except TimeoutError:
                return
            if "method" in message:
                self.events.append(message)

    def close(self) -> None:
        self._ws.close()


def _kill(process: subprocess.Popen) -> None:
    """End Chromium's whole process group: TERM, then KILL for what is left (renderers outlive the leader); <= 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def _chromium(width_px: int, height_px: int, deadline: float) -> Iterator[str]:
    """Start headless Chromium in a fresh profile; yield its browser websocket URL; kill its process group after."""
    with tempfile.TemporaryDirectory(prefix="srpipe-chromium-", ignore_cleanup_errors=True) as profile:
        log_path = Path(profile).parent / f"{Path(profile).name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(CHROMIUM), *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width_px},{height_px}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # its own process group, so _kill reaches the renderers too
            )
        try:
            yield _browser_url(Path(profile) / "DevToolsActivePort", process, log_path, deadline)
        finally:
            _kill(process)
            log_path.unlink(missing_ok=True)


def _browser_url(port_file: Path, process: subprocess.Popen, log_path: Path, deadline: float) -> str:
    """ws://127.0.0.1:<port>/devtools/browser/<id> from DevToolsActivePort (line 1: port, line 2: path)."""
    while time.monotonic() < deadline:
        lines = port_file.read_text().split("\n") if port_file.exists() else []
        if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
            return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"chromium exited with {process.returncode} before it listened:\n{tail}")
        time.sleep(0.05)
    raise TimeoutError(f"chromium wrote no {port_file.name} in time:\n{log_path.read_text(errors='replace')[-2000:]}")


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """console.error / console.assert calls, uncaught exceptions and error log entries (failed loads) as text."""
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            found.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text', '')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"{entry.get('source', 'log')}: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return found


def render(path: str | Path, timeout_s: float = 30.0, width_px: int = 1280, height_px: int = 900) -> PageReport:
    """Load the HTML file at `path` (file://) in a fresh headless Chromium and report what it did (viewport shot)."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is absent; install Debian's `chromium` package")
    deadline = time.monotonic() + timeout_s
    with _chromium(width_px, height_px, deadline) as browser_url, closing(_Cdp(browser_url, deadline)) as browser:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        page_url = browser_url.split("/devtools/")[0] + f"/devtools/page/{target}"
        with closing(_Cdp(page_url, deadline)) as page:
            for domain in ("Page", "Runtime", "Log"):
                page.call(f"{domain}.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width_px,
                height=height_px,
                deviceScaleFactor=1,
                mobile=False,
            )
            page.events.clear()
            navigation = page.call("Page.navigate", url=Path(path).resolve().as_uri())
            if navigation.get("errorText"):
                raise RuntimeError(f"chromium could not open {path}: {navigation['errorText']}")
            page.wait_event("Page.loadEventFired")
            counts = page.call("Runtime.evaluate", expression=_IMAGES_JS, returnByValue=True)["result"]["value"]
            page.drain(0.2)  # console messages logged just after load
            shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    return PageReport(counts["title"], counts["images"], counts["loaded"], _errors(page.events), shot)


def is_blank(png: bytes, min_std: float = 2.0) -> bool:
    """True when the PNG's grey levels (0-255) vary by less than `min_std`: an empty or single-colour page."""
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    return float(grey.std()) < min_std
