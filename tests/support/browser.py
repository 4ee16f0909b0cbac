"""Headless Chromium, a real browser for the web page's tests, driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path
from typing import Any


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (its fds 3 and 4), with no driver.

    ``--dump-dom`` can't show this page: it dumps at the load event, before the page's fetches answer, and
    ``--virtual-time-budget`` never runs out, since virtual time waits for the page's event stream to end.
    """

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        commands, self._commands = os.pipe()
        self._replies, replies = os.pipe()
        assert min(commands, replies) > 4  # so that moving them to 3 and 4 overwrites neither

        def on_fds_3_and_4() -> None:
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self._process = await asyncio.create_subprocess_exec(
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}", "--window-size=1280,800", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=on_fds_3_and_4, close_fds=False)  # our other fds are not inheritable
        os.close(commands)
        os.close(replies)
        self._reader = asyncio.StreamReader(limit=64 * 2**20)
        self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader), os.fdopen(self._replies, "rb"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        os.close(self._commands)  # Chromium quits when its pipe closes
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        self._transport.close()

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        async with asyncio.timeout(30):
            while (reply := json.loads((await self._reader.readuntil(b"\0"))[:-1])).get("id") != message_id:
                pass  # an event
        assert "error" not in reply, reply
        return reply["result"]

    async def open(self, url: str) -> str:
        """A new tab at ``url``; returns its session."""
        target = (await self.send("Target.createTarget", url=url))["targetId"]
        return (await self.send("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]

    async def evaluate(self, session: str, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return reply["result"].get("value")
