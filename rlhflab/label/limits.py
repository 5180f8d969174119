"""Request-body limits, enforced before the app reads a byte of the body (pure ASGI middleware).

A body whose `Content-Length` is over the route's limit is answered 413 at once, unread; a chunked body (no
length) is counted as it arrives and answered 413 as soon as it passes the limit. Limits are per route: the
bulk admin routes (task and label uploads) take `bulk_bytes` and the upload form `upload_bytes`, but only from
a client whose cookie carries a session (anyone else gets the small limit even there); every other route takes
`body_bytes`, enough for the largest form (a project's instructions) and answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BULK_ROUTES = re.compile(r"^/api/projects/\d+/(tasks|samples|best-of-n|import)$")
UPLOAD_ROUTES = re.compile(r"^/admin/projects/\d+/upload$")


@dataclass(frozen=True)
class BodyLimits:
    body_bytes: int = 256 * 1024
    bulk_bytes: int = 64 * 1024 * 1024
    upload_bytes: int = 2 * 64 * 1024 * 1024 + 64 * 1024  # two files of max_upload_bytes and the form fields

    def for_request(self, path: str, has_session: bool) -> int:
        if has_session and BULK_ROUTES.match(path):
            return self.bulk_bytes
        if has_session and UPLOAD_ROUTES.match(path):
            return self.upload_bytes
        return self.body_bytes


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Installed inside Starlette's SessionMiddleware, so `scope["session"]` is already decoded (a signature
    check, no database) when the limit is chosen."""

    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = scope.get("session") or {}
        limit = self.limits.for_request(scope["path"], isinstance(session.get("sid"), str))
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "Content-Length is not a number")
            return
        if declared is not None and declared > limit:
            await _answer(send, 413, f"request body over {limit} bytes")
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a `receive` that stops at `limit` bytes; whatever the app then answers (it may turn
        the error into a 400 or a 403) becomes the 413."""
        seen = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the 413 below replaces the app's answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await _answer(send, 413, f"request body over {limit} bytes")


def _content_length(scope: Scope) -> int | None:
    """The declared length, None without one, -1 when it is not a number."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
