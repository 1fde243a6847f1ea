"""``Idempotency-Key``: a retried write request is answered from its first answer, not done twice."""

import hashlib
import re

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from edgelearn.store import Store

WRITES = re.compile(r"/api/(learn|consolidate|knowledge|queue/\d+|versions/\d+/(rollback|tag))")
MAX_KEY_CHARS = 200


class IdempotencyKeys:
    """ASGI middleware for POSTs to the write routes that carry an ``Idempotency-Key`` header.

    The first successful answer is stored (per key, route and credential) before the client sees it; a
    retry gets that answer again, marked ``Idempotent-Replayed: true``, and nothing is learned twice. A
    retry while the first is still running gets 409. Answers are replayed only to the same
    ``Authorization`` header (kept as a hash), so a key never stands in for the token.
    """

    def __init__(self, app, store: Store | None = None):
        self.app, self.store = app, store  # None: the app's station's store, which a lifespan may build later
        self.running: set[tuple[str, str, str]] = set()

    async def __call__(self, scope, receive, send):
        headers = dict(scope["headers"]) if scope["type"] == "http" else {}
        key = headers.get(b"idempotency-key")
        if key is None or scope["method"] != "POST" or not WRITES.fullmatch(scope["path"]):
            return await self.app(scope, receive, send)
        key = key.decode("latin-1")
        if not 1 <= len(key) <= MAX_KEY_CHARS:
            return await JSONResponse({"detail": f"an Idempotency-Key has 1 to {MAX_KEY_CHARS} characters"},
                                      400)(scope, receive, send)
        request = (key, scope["path"], hashlib.sha256(headers.get(b"authorization", b"")).hexdigest())
        answer = await run_in_threadpool(self._store(scope).answer, *request)
        if answer is not None:
            status, body = answer
            response = Response(body, status, media_type="application/json", headers={"Idempotent-Replayed": "true"})
            return await response(scope, receive, send)
        if request in self.running:
            return await JSONResponse({"detail": "a request with this Idempotency-Key is still running; retry "
                                                 "when it is done"}, 409)(scope, receive, send)
        self.running.add(request)
        try:
            await self._answer_and_remember(request, scope, receive, send)
        finally:
            self.running.discard(request)

    async def _answer_and_remember(self, request, scope, receive, send) -> None:
        """Run the request, hold its (small JSON) answer, store it if it succeeded, then send it."""
        messages = []

        async def hold(message):
            messages.append(message)

        await self.app(scope, receive, hold)
        status = next((m["status"] for m in messages if m["type"] == "http.response.start"), 500)
        if 200 <= status < 300:
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            await run_in_threadpool(self._store(scope).remember_answer, *request, status, body.decode())
        for message in messages:
            await send(message)

    def _store(self, scope) -> Store:
        return self.store if self.store is not None else scope["app"].state.station.store
