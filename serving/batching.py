"""Server-side batching of concurrent requests to one signature, as TF Serving's ``batching.config``
describes it."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from serving.configs import Batching
from serving.errors import ServingError


@dataclass
class _Request:
    inputs: dict[str, np.ndarray]
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict | None = None
    error: Exception | None = None
    crowded: bool = False               # another request arrived just before this one


class Batcher:
    """Groups concurrent calls of one signature into batches along axis 0 (TF Serving's
    batching: up to ``max_batch_size`` inputs, waiting at most ``timeout`` for more). It waits
    for peers only when requests are arriving together (one came within the last timeout
    window): a lone request would otherwise pay the whole timeout for nothing. A batch that
    fails is retried request by request, so one bad image fails only its own request. At most
    ``max_enqueued_batches`` batches wait: beyond that a call fails at once with UNAVAILABLE,
    as TF Serving's "batch scheduling queue is full", instead of queueing without bound."""

    def __init__(self, fn, batching: Batching, enabled: bool = True, name: str = "batcher"):
        self.fn, self.batching, self.enabled = fn, batching, enabled
        self.queue: queue.Queue[_Request] = queue.Queue(maxsize=batching.max_enqueued_batches * batching.max_batch_size)
        self.threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                        for i in range(batching.num_batch_threads)] if enabled else []
        self.stopped, self.draining = False, True
        self.lock = threading.Lock()              # a call is queued before a stop, or refused
        self.last_arrival = 0.0
        self.batches_run = 0                      # observable: batches executed (<= requests)
        for t in self.threads:
            t.start()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.enabled:
            return self._run(inputs)
        request = _Request(inputs)
        with self.lock:
            if self.stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the model version is being unloaded; try again")
            now = time.monotonic()
            request.crowded = now - self.last_arrival < 2 * self.batching.batch_timeout_micros / 1e6
            self.last_arrival = now
            try:
                self.queue.put_nowait(request)
            except queue.Full:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "the batch scheduling queue is full; retry with back-off") from None
        request.done.wait()
        if request.error:
            raise request.error
        return request.outputs

    def _run(self, inputs):
        import tensorflow as tf

        result = self.fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def _loop(self):
        timeout = self.batching.batch_timeout_micros / 1e6
        while not (self.stopped and (not self.draining or self.queue.empty())):
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch, size = [first], _rows(first.inputs)
            deadline = time.monotonic() + (timeout if first.crowded or not self.queue.empty() else 0.0)
            while size < self.batching.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and self.queue.empty():
                    break
                try:
                    nxt = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(nxt)
                size += _rows(nxt.inputs)
            self._execute(batch)

    def _execute(self, batch: list[_Request]):
        self.batches_run += 1
        try:
            if len(batch) == 1:
                batch[0].outputs = self._run(batch[0].inputs)
            else:
                merged = {k: np.concatenate([r.inputs[k] for r in batch]) for k in batch[0].inputs}
                outputs = self._run(merged)
                start = 0
                for r in batch:
                    n = _rows(r.inputs)
                    r.outputs = {k: v[start:start + n] for k, v in outputs.items()}
                    start += n
        except Exception:
            for r in batch:                       # isolate the failing request
                try:
                    r.outputs = self._run(r.inputs)
                except Exception as e:
                    r.error = e
        for r in batch:
            r.done.set()

    def stop(self, drain: bool = True, timeout: float = 30.0):
        """Stop taking calls. ``drain``: answer the calls already queued first (an unload while
        clients wait); otherwise fail them with UNAVAILABLE (the server stopping). Either way no
        caller stays blocked and the threads end, releasing the model they hold."""
        with self.lock:
            self.stopped, self.draining = True, drain
        if not drain:
            self._fail_queued()
        for t in self.threads:
            t.join(timeout)
        self._fail_queued()                       # whatever the threads did not reach

    def _fail_queued(self):
        while True:
            try:
                request = self.queue.get_nowait()
            except queue.Empty:
                return
            request.error = ServingError(grpc.StatusCode.UNAVAILABLE, "the model server is stopping; try again")
            request.done.set()


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0
