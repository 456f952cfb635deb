"""The harness's end of one rank's connection: inputs go out as fast as the rank reads them, replies are decoded
as they arrive, and nothing ever blocks (a rank that stops reading cannot freeze the harness).

Replies are framed without pickle and size-capped (rank/wire.py); a reply that breaks the framing
closes the channel with a WireError reply in its inbox.
"""
from __future__ import annotations

import selectors
import socket
import time
from typing import Any

from .rank import wire

REPLY_LIMIT = 256 * 2**20     # bytes of one rank's reply


class RankChannel:
    def __init__(self, conn: socket.socket, pid: int, selector: selectors.BaseSelector):
        self.conn, self.pid, self.selector = conn, pid, selector   # pid: what the kernel reported (SO_PEERCRED)
        self.reader = wire.Reader(REPLY_LIMIT)
        self.inbox: list[Any] = []
        self.outbox: bytes | memoryview = b""   # what the harness still has to send this rank (its inputs)
        self.closed = False
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ, self)

    def send(self, message: dict) -> None:
        """Queue a message and send what the socket takes now."""
        self.outbox = memoryview(wire.frame(message))   # sliced as it goes out, never copied
        self.write()

    def write(self) -> None:
        """Send what the socket takes now of the pending inputs (never blocks)."""
        try:
            sent = self.conn.send(self.outbox) if self.outbox else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.outbox = b""
            self._close()
            return
        self.outbox = self.outbox[sent:]
        self.watch()

    def watch(self) -> None:
        """Wait for replies, and for room in the socket while inputs are pending."""
        if not self.closed:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
            self.selector.modify(self.conn, events, self)

    def read(self) -> None:
        try:
            data = self.conn.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close()
            return
        try:
            for message in self.reader.feed(data):
                if isinstance(message, dict):
                    message["_at"] = time.monotonic()
                self.inbox.append(message)
        except wire.WireError as exc:
            self._close()
            self.inbox.append({"ok": False, "phase": "run",
                               "error": {"type": "WireError", "message": str(exc), "line": f"WireError: {exc}",
                                         "where": "", "traceback": ""}})

    def drop_pending(self) -> None:
        """The task is over: inputs not yet sent are dropped; keep listening."""
        self.outbox = b""
        self.watch()

    def _close(self) -> None:
        self.closed = True
        self.selector.unregister(self.conn)
