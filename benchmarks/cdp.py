"""Headless Chromium driven over the DevTools protocol (CDP) with the `websockets` client that uvicorn already
needs: no Playwright, no browser download. Debian's `chromium` package provides the browser.

Chromium's fake media capture plays a WAV file as the microphone, in real time, once (`%noloop`)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

CHROMIUM = os.environ.get("OMNI_CHROMIUM", "chromium")


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        raise BrowserMissing(f"the browser test needs Chromium ({CHROMIUM!r} is not on PATH): apt-get install -y "
                             f"chromium, or point OMNI_CHROMIUM at a Chromium binary")
    return path


class Chromium:
    """One headless browser with one page. `mic_wav`: the file the fake microphone plays."""

    def __init__(self, mic_wav: Path | None = None, width: int = 420, height: int = 860, timeout: float = 30.0):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="omni-chromium-")
        args = [chromium_path(), "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                "--disable-background-networking", "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--window-size={width},{height}"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        if mic_wav is not None:
            args.append(f"--use-file-for-fake-audio-capture={mic_wav}%noloop")
        self.proc = subprocess.Popen(args + ["about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        self._stack = ExitStack()
        try:
            port = self._port(timeout)
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
            page = next(t for t in targets if t["type"] == "page")
            self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=64 << 20,
                                                        open_timeout=timeout))
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _port(self, timeout: float) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode} before it was ready")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout:g} s")

    def call(self, method: str, **params) -> dict:
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error in {expression[:60]!r}: {r['exceptionDetails'].get('exception', {})}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float, what: str, poll: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(poll)
        raise TimeoutError(f"the page did not get there within {timeout:g} s: {what}")

    def screenshot(self, path: Path, width: int = 400, height: int = 780, scale: float = 1.5) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale,
                  mobile=True)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        tmp = Path(path).with_suffix(".tmp.png")
        tmp.write_bytes(base64.b64decode(data))
        os.replace(tmp, path)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()
