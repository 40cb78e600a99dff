"""Headless Chromium for the tests that open a page as a user would.

The page is driven over the DevTools protocol, which reports every request
the page makes (Network.requestWillBeSent), so "works offline" is checked on
the page's own requests. Chromium's own background traffic (it calls Google's
time and account servers even for an empty page) is not the page's and is not
counted; a proxy on loopback that refuses everything keeps all of it, the
browser's included, from leaving the machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


class RefusingProxy:
    """Where Chromium's traffic goes (--proxy-server): answered 403, never forwarded."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@dataclass
class Page:
    dom: str
    screenshot: bytes
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, in order

    def remote(self) -> list[str]:
        """The requests that would leave the machine: anything but file:, data: and loopback."""
        local = ("file:", "data:", "http://127.0.0.1", "http://localhost", "about:")
        return [url for url in self.requests if not url.startswith(local)]


def open_page(url: str, out: Path, settle_s: float = 1.5, timeout_s: float = 60) -> Page:
    """Load `url` in headless Chromium; its DOM once loaded and quiet for
    `settle_s` (scripts and their fetches done), a screenshot, and its requests."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "this test needs Debian's chromium (apt-get install -y chromium; .ci/run installs it)"
    out.mkdir(parents=True, exist_ok=True)
    proxy = RefusingProxy()
    profile = out / "profile"
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's is stale: wait for the new one
    process = subprocess.Popen(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy.port}",
            "--window-size=1280,2000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (active.exists() and len(active.read_text().split()) == 2):
            assert process.poll() is None, process.stderr.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port, path = active.read_text().split()
        return asyncio.run(asyncio.wait_for(_drive(f"ws://127.0.0.1:{port}{path}", url, settle_s), timeout_s))
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        proxy.close()


async def _drive(browser_ws: str, url: str, settle_s: float) -> Page:
    import websockets

    async with websockets.connect(browser_ws, max_size=None) as ws:
        ids, events = iter(range(1, 1_000_000)), []

        async def call(method: str, session: str | None = None, **params: object) -> dict:
            message_id = next(ids)
            message = {"id": message_id, "method": method, "params": params}
            if session:
                message["sessionId"] = session
            await ws.send(json.dumps(message))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == message_id:
                    assert "error" not in reply, reply
                    return reply["result"]
                events.append(reply)

        target = (await call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await call("Network.enable", session)
        await call("Page.enable", session)
        await call("Page.navigate", session, url=url)
        loaded, quiet_since = False, time.monotonic()
        while not (loaded and time.monotonic() - quiet_since > settle_s):
            try:
                event = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
            except asyncio.TimeoutError:
                continue
            events.append(event)
            if event.get("method") == "Page.loadEventFired":
                loaded = True
            if event.get("method", "").startswith("Network."):
                quiet_since = time.monotonic()
        dom = (
            await call("Runtime.evaluate", session, expression="document.documentElement.outerHTML", returnByValue=True)
        )["result"]["value"]
        shot = base64.b64decode((await call("Page.captureScreenshot", session, format="png"))["data"])
        requests = [
            e["params"]["request"]["url"]
            for e in events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session
        ]
        return Page(dom, shot, requests)
