"""Concurrent predictions share the backbone: one thread runs it on whatever frames are waiting.

With one client a frame runs alone (no waiting for company); with several, the frames that arrived
during the previous forward pass go through together, which costs less per frame than one by one
and keeps the CPU's cores from being split between competing forward passes.
"""

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np


class Batcher:
    """``submit(array)`` -> that array's row of ``run(stacked arrays)``, computed on one worker thread."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 8):
        self.run, self.max_batch = run, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="edgelearn-batcher", daemon=True)
        self._thread.start()

    def submit(self, x: np.ndarray) -> np.ndarray:
        return self.submit_many([x])

    def submit_many(self, xs: list[np.ndarray]) -> np.ndarray:
        """The rows of several preprocessed images (a teaching request's images): they join the queue together, so
        teaching shares forward passes with predictions instead of running a second one beside them."""
        futures = [Future() for _ in xs]
        for x, future in zip(xs, futures, strict=True):
            self._queue.put((x, future))
        return np.concatenate([future.result() for future in futures])

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                out = self.run(np.stack([x for x, _ in batch]))
                for i, (_, future) in enumerate(batch):
                    future.set_result(out[i:i + 1])
            except Exception as exc:  # the callers see it, the worker lives on
                for _, future in batch:
                    future.set_exception(exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

