"""Headless Chromium, driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in NUL, commands on fd 3, replies on fd 4), to see what a page renders.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def executable() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    def __init__(self, url: str, timeout: float = 60.0):
        exe = executable()
        if exe is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="fxpga-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()

        def fds():  # the child finds the pipes at fds 3 and 4 (moved high first: a pipe
            # end may itself be fd 3 or 4)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, res_w)]
            for target, fd in zip((3, 4), high, strict=True):
                os.dup2(fd, target)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",  # tests may run as root
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                "--window-size=1200,900",
                url,
            ],
            preexec_fn=fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._id = 0

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._res_r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} in {self.timeout} s")
            chunk = os.read(self._res_r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()}) during {method}")
            self._buf += chunk

    def page(self) -> str:
        """A session attached to the page chromium opened."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pages = [
                t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"
            ]
            if pages:
                return self.send(
                    "Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True
                )["sessionId"]
            time.sleep(0.1)
        raise TimeoutError("chromium opened no page")

    def evaluate(self, session: str, expression: str):
        r = self.send(
            "Runtime.evaluate",
            session,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)
        shutil.rmtree(self._profile, ignore_errors=True)


LOADED_IMAGES = """new Promise(done => {
  const poll = () => document.URL === $PAGE && document.readyState === "complete"
    ? done(Array.from(document.images).map(
        i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))
    : setTimeout(poll, 50);
  poll();
})"""


def rendered_images(page: Path) -> list[tuple[str, bool, int, int]]:
    """(alt, complete, natural width, natural height) of every image once ``page`` loaded."""
    url = Path(page).resolve().as_uri()
    browser = Chromium(url)
    try:
        script = LOADED_IMAGES.replace("$PAGE", json.dumps(url))
        session = browser.page()
        deadline = time.monotonic() + browser.timeout
        while True:
            try:
                return [tuple(i) for i in browser.evaluate(session, script)]
            except RuntimeError as e:  # the page navigated away from about:blank meanwhile
                if "context was destroyed" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        browser.close()
