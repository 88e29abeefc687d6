"""Dynamic batching: the tiles of concurrent requests through the model in one call.

A request hands its tiles to ``Batcher.submit`` and gets a future. One worker
thread takes the first waiting request, then every request already waiting
(those that came while the last call ran) and, with ``max_wait``, those that
come within that many seconds, up to ``max_tiles`` tiles, runs them
through ``predict_tiles`` (fold ensemble x TTA x temperature, predict.py's
code) in one call, and hands each request its rows. On a CPU a batch of 64
tiles costs far less than 64 calls of one (``benchmarks/serve.py``); with
``max_wait = 0`` and ``max_tiles = 0`` every request is its own call (the
unbatched server the benchmark compares against). Waiting measured no gain:
with the compact CNN, 5 ms of it cost 8 ms at one client (p50 21.5 against
13.6 ms) and served 145 requests/s at 16 clients against 160 without.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Sequence

import numpy as np


class Batcher:
    """One model, called from one thread, fed by many requests."""

    def __init__(self, ensemble: Sequence, views: Sequence[int], max_tiles: int = 256,
                 max_wait: float = 0.0):
        from pcam.settings import AugmentSettings

        self.ensemble, self.views = ensemble, tuple(views)
        self.augment = AugmentSettings(centre_crop=ensemble[0][1].centre_crop)
        self.max_tiles, self.max_wait = max_tiles, max_wait
        self.calls = 0  # model calls made: the batching's effect, for /health
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="pcam-batcher", daemon=True)
        self._thread.start()

    def submit(self, tiles: np.ndarray) -> Future:
        """The future (N, K) probabilities of ``tiles`` (uint8, N >= 1)."""
        future: Future = Future()
        self._queue.put((tiles, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first) -> list:
        taken, count = [first], len(first[0])
        if not self.max_tiles:
            return taken
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_tiles:
            left = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            taken.append(item)
            count += len(item[0])
        return taken

    def _run(self) -> None:
        from pcam.predict.ensemble import predict_tiles

        while True:
            first = self._queue.get()
            if first is None:
                return
            taken = self._gather(first)
            try:
                probs = predict_tiles(self.ensemble, np.concatenate([t for t, _ in taken]),
                                      self.views, self.augment, batch_images=max(
                                          256, len(self.views) * self.max_tiles))
                self.calls += 1
            except Exception as err:  # the model failed: every waiting request hears it
                for _, future in taken:
                    future.set_exception(err)
                continue
            start = 0
            for tiles, future in taken:
                future.set_result(probs[start:start + len(tiles)])
                start += len(tiles)
