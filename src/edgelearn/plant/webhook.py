"""Decisions as HTTP POSTs of JSON, for whatever speaks neither MQTT nor OPC UA (a dashboard, a script).

A worker thread sends them in order; a receiver that is away is retried with backoff while new decisions
wait in a bounded queue (the oldest goes when it is full, and is counted in ``dropped``). Uses the
standard library only: the device install has no HTTP client of its own.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections import deque
from urllib.parse import urlsplit

from edgelearn.errors import ParameterError
from edgelearn.plant.decision import Decision

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # seconds between attempts while the receiver is away


class WebhookSink:
    """POST each decision's ``to_dict()`` to ``url``. ``sent``, ``dropped`` (queue full) and ``refused``
    (the receiver answered 4xx: sending it again would not help) count what happened."""

    def __init__(self, url: str, *, timeout: float = 2.0, max_buffered: int = 1000):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ParameterError(f"webhook {url!r}: give an http:// or https:// URL")
        self.url, self.timeout = url, timeout
        self.sent = self.dropped = self.refused = 0
        self._queue: deque[bytes] = deque(maxlen=max_buffered)
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._send_forever, name="webhook", daemon=True)
        self._thread.start()

    def publish(self, decision: Decision) -> None:
        body = json.dumps(decision.to_dict()).encode()
        with self._changed:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(body)
            self._changed.notify_all()

    def close(self, wait: float | None = None) -> None:
        """Send what is queued (for up to ``wait`` seconds, default ``timeout``), then stop."""
        with self._changed:
            self._changed.wait_for(lambda: not self._queue, self.timeout if wait is None else wait)
            self._closing.set()
            self._changed.notify_all()
        self._thread.join(timeout=self.timeout + 1)

    def _send_forever(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing.is_set())
                if self._closing.is_set():
                    return
                body = self._queue[0]  # stays queued until it is sent
            if self._send(body):
                backoff = BACKOFF_FIRST
                self._done(body)
            else:
                self._closing.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX)

    def _send(self, body: bytes) -> bool:
        """Whether ``body`` is done with: delivered, or refused by the receiver (4xx)."""
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                self.sent += 1
                return True
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:
                self.refused += 1
                log.error("webhook %s refused a decision: HTTP %d", self.url, exc.code)
                return True
            log.warning("webhook %s: HTTP %d, trying again", self.url, exc.code)
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, a broken answer
            log.warning("webhook %s: %s, trying again", self.url, exc)
        return False

    def _done(self, body: bytes) -> None:
        with self._changed:
            if self._queue and self._queue[0] is body:  # unless it was dropped as the oldest meanwhile
                self._queue.popleft()
            self._changed.notify_all()
