"""An embedded model server that speaks TensorFlow Serving's gRPC API, for one machine.

``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus), and with ``rest_port`` TF Serving's REST API (``serving.rest``), with TF Serving's status codes: NOT_FOUND for an unknown model, version or
label, INVALID_ARGUMENT for bad input. It serves the versions ``models.config`` names (or the
newest of each model when there is none), loads and warms every one at start (replaying
``assets.extra/tf_serving_warmup_requests`` as TF Serving does), polls the repository for new
versions, and batches concurrent requests to the same model (``batching.config``: max batch
size, timeout). The gateway cannot tell it from the real server; on a cluster the official
``tensorflow/serving`` image reads the same repository.

    python -m serving serve --model-repo DIR --port 8500 [--rest-port 8501]
"""
from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from serving import repository

log = logging.getLogger("serving")


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


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

    def __init__(self, fn, batching: repository.Batching, enabled: bool = True, name: str = "batcher"):
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


class LoadedVersion:
    """One version, loaded and warmed. The batchers (and their threads) are made only after the
    warm-up requests all succeeded: a version that fails to load leaves nothing running behind."""

    def __init__(self, name: str, version: int, path: Path, batching: repository.Batching, batching_on: bool):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path = name, version, path
        self.loaded = tf.saved_model.load(str(path))
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = saved.meta_graphs[0].signature_def
        self.warmed = self.warm_up(dict(self.loaded.signatures))
        self.batchers = {key: Batcher(fn, batching, batching_on, name=f"batcher-{name}-{version}-{key}")
                         for key, fn in self.loaded.signatures.items()}

    def warm_up(self, signatures: dict) -> int:
        """Replay the export's warmup requests, as TF Serving does at load time."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / "assets.extra" / repository.WARMUP_FILE
        count = 0
        if path.exists():
            for raw in tf.data.TFRecordDataset(str(path)):
                request = prediction_log_pb2.PredictionLog.FromString(raw.numpy()).predict_log.request
                key = request.model_spec.signature_name or "serving_default"
                if key not in signatures:
                    raise ValueError(f"warm-up request for unknown signature {key!r}")
                signatures[key](**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
                count += 1
        return count

    def stop(self, drain: bool = True):
        for b in self.batchers.values():
            b.stop(drain)


def verify_export(path: str | Path) -> str | None:
    """Why the export at ``path`` would fail to serve (it does not load, or a warm-up request
    fails), or None when it loads and warms up as a version of this server would."""
    try:
        LoadedVersion("verify", 0, Path(path), repository.Batching(), batching_on=False).stop(drain=False)
    except Exception as e:      # any failure to load is the reason, not a crash of the push
        return _reason(f"{type(e).__name__}: {e}")
    finally:
        gc.collect()
    return None


@dataclass
class LoadFailure:
    """A version that failed to load: why, how often, and when it is tried again."""
    message: str
    attempts: int
    retry_at: float


class ModelStore:
    """What is loaded: model name -> version -> LoadedVersion, plus version labels.

    Roll-outs preserve availability, as TF Serving's default version policy does: a version
    leaves only once a version the config wants is available, so a broken push never takes
    the serving one down. A version that fails to load is retried with exponential back-off
    (``retry_s`` doubling up to ``retry_max_s``) and reported in status as END with its error."""

    def __init__(self, root: str | Path, batching_on: bool = True, retry_s: float = 2.0, retry_max_s: float = 300.0):
        self.root, self.batching_on = Path(root), batching_on
        self.retry_s, self.retry_max_s = retry_s, retry_max_s
        self.lock = threading.Lock()
        self.loaded: dict[str, dict[int, LoadedVersion]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.failures: dict[tuple[str, int], LoadFailure] = {}
        self.closed = False              # after stop(): nothing loads again (a poll in flight)

    def wanted(self) -> dict[str, tuple[list[int], dict[str, int]]]:
        if (self.root / repository.MODELS_CONFIG).exists():
            config = repository.read_models_config(self.root)
            return {c.name: (sorted(c.model_version_policy.specific.versions) or repository.versions(self.root, c.name)[-1:],
                             dict(c.version_labels)) for c in config.model_config_list.config}
        return {m: (repository.versions(self.root, m)[-1:], {}) for m in repository.models(self.root)}

    def _load(self, name: str, version: int, batching: repository.Batching) -> None:
        failure = self.failures.get((name, version))
        if failure and time.monotonic() < failure.retry_at:
            return
        try:
            lv = LoadedVersion(name, version, self.root / name / str(version), batching, self.batching_on)
        except Exception as e:     # a broken export must not take the server down
            attempts = failure.attempts + 1 if failure else 1
            delay = min(self.retry_max_s, self.retry_s * 2 ** (attempts - 1))
            message = _reason(str(e))
            self.failures[(name, version)] = LoadFailure(message, attempts, time.monotonic() + delay)
            log.error("could not load %s version %s (attempt %d, next in %.0f s): %s", name, version, attempts, delay, message)
            gc.collect()           # what the failed load built goes now, not at some later collection
            return
        self.failures.pop((name, version), None)
        with self.lock:
            if not self.closed:
                self.loaded.setdefault(name, {})[version] = lv
        if self.closed:                  # the server stopped while this version loaded
            lv.stop(drain=False)
            return
        log.info("loaded %s version %s (%d warm-up requests)", name, version, lv.warmed)

    def refresh(self) -> None:
        """Load versions that appeared, unload those no longer wanted (the poll)."""
        if self.closed:
            return
        batching = repository.read_batching(self.root)
        wanted = self.wanted()
        for name, (vers, _) in wanted.items():
            for v in vers:
                if v not in self.loaded.get(name, {}) and (self.root / name / str(v) / "saved_model.pb").exists():
                    self._load(name, v, batching)
        self.failures = {k: f for k, f in self.failures.items() if k[1] in wanted.get(k[0], ([], {}))[0]}
        leaving = []
        with self.lock:
            labels = {name: self._applied(name, wanted_labels) for name, (_, wanted_labels) in wanted.items()}
            for name in list(self.loaded):
                # a version a label still holds (its new version not loaded yet) stays too
                keep = set(wanted[name][0]) | set(labels.get(name, {}).values()) if name in wanted else set()
                if name in wanted and not keep & set(self.loaded[name]):
                    continue               # nothing wanted is available yet: keep serving what is
                for v in [v for v in self.loaded[name] if v not in keep]:
                    leaving.append(self.loaded[name].pop(v))
                if not self.loaded[name]:
                    del self.loaded[name]
            self.labels = labels
        for lv in leaving:                 # outside the lock: queued calls are answered first
            lv.stop(drain=True)
            log.info("unloaded %s version %s", lv.name, lv.version)

    def _applied(self, name: str, wanted: dict[str, int]) -> dict[str, int]:
        """The labels the config wants, as far as their versions are loaded: as TF Serving does
        (without --allow_version_labels_for_unavailable_models), a label moves to a version only
        once it is AVAILABLE, and keeps its old version meanwhile (held under the lock)."""
        loaded, old = self.loaded.get(name, {}), self.labels.get(name, {})
        applied = {}
        for label, version in wanted.items():
            if version in loaded:
                applied[label] = version
            elif old.get(label) in loaded:
                applied[label] = old[label]
        return applied

    def status(self, name: str) -> list[tuple[int, str, str]]:
        """(version, state, error message) of every loaded or failed version, as TF Serving
        reports them: AVAILABLE, or END with the load error."""
        with self.lock:
            rows = [(v, "AVAILABLE", "") for v in self.loaded.get(name, {})]
        rows += [(v, "END", f"{f.message} (load attempt {f.attempts} failed; retrying with back-off)")
                 for (n, v), f in list(self.failures.items()) if n == name]
        return sorted(rows)

    def predict(self, model_spec, inputs: dict[str, np.ndarray]) -> tuple[LoadedVersion, str, dict[str, np.ndarray]]:
        """Run one signature of the version ``model_spec`` names on 1-D batches: (version, signature
        key, outputs). The same checks and messages for gRPC and REST, as TF Serving's."""
        lv = self.resolve(model_spec)
        key = model_spec.signature_name or "serving_default"
        if key not in lv.batchers:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature key \"{key}\" not found.")
        expected = set(lv.signature_defs[key].inputs)
        if set(inputs) != expected:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input keys {sorted(inputs)} do not match the signature's {sorted(expected)}")
        if any(a.ndim != 1 or a.shape[0] == 0 for a in inputs.values()):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "inputs must be non-empty 1-D batches")
        return lv, key, lv.batchers[key](inputs)

    def signature_map(self, model_spec):
        """(version, SignatureDefMap) of the version the spec names: GetModelMetadata's content."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        lv = self.resolve(model_spec)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, v in lv.signature_defs.items():
            sig_map.signature_def[k].CopyFrom(v)
        return lv, sig_map

    def status_response(self, model_spec):
        """GetModelStatusResponse for a model (all versions, or the one the spec names)."""
        from tensorflow_serving.apis import get_model_status_pb2

        rows = self.status(model_spec.name)
        if not rows:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {model_spec.name}")
        which = model_spec.WhichOneof("version_choice")
        if which == "version_label":
            wanted = self.labels.get(model_spec.name, {}).get(model_spec.version_label)
            if wanted is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {model_spec.version_label}")
        else:
            wanted = model_spec.version.value if which == "version" else None
        if wanted is not None:
            rows = [r for r in rows if r[0] == wanted]
            if not rows:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {wanted} of model {model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error in rows:
            status = response.model_version_status.add(version=version, state=getattr(
                get_model_status_pb2.ModelVersionStatus, state))
            status.status.error_code = 2 if error else 0      # tensorflow.error.UNKNOWN
            status.status.error_message = error
        return response

    def resolve(self, model_spec) -> LoadedVersion:
        with self.lock:
            versions = self.loaded.get(model_spec.name)
            if not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
            which = model_spec.WhichOneof("version_choice")
            if which == "version":
                v = model_spec.version.value
            elif which == "version_label":
                v = self.labels.get(model_spec.name, {}).get(model_spec.version_label)
                if v is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {model_spec.version_label}")
            else:
                v = max(versions)
            if v not in versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({model_spec.name}, {v})")
            return versions[v]

    def stop(self):
        """Fail the calls still queued (the server is going away) and end every batcher."""
        with self.lock:
            self.closed = True
            leaving = [lv for versions in self.loaded.values() for lv in versions.values()]
            self.loaded.clear()
        for lv in leaving:
            lv.stop(drain=False)


def _reason(message: str) -> str:
    """The line of a TensorFlow op error that says what was wrong (it precedes the "[[node"
    marker), e.g. "Unknown image file format. One of JPEG, PNG, GIF, BMP required."."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("[[") and i:
            return lines[i - 1]
    return lines[-1] if lines else "invalid argument"


def _servicers(store: ModelStore):
    import tensorflow as tf
    from tensorflow_serving.apis import (get_model_metadata_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    def guarded(method):
        def wrapper(self, request, context):
            try:
                return method(self, request, context)
            except ServingError as e:
                context.abort(e.code, str(e))
            except tf.errors.InvalidArgumentError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _reason(e.message))
            except (ValueError, TypeError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return wrapper

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        @guarded
        def Predict(self, request, context):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            lv, key, outputs = store.predict(request.model_spec, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = lv.name
            response.model_spec.version.value = lv.version
            response.model_spec.signature_name = key
            for name, value in outputs.items():
                if not request.output_filter or name in request.output_filter:
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        @guarded
        def GetModelMetadata(self, request, context):
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is the one supported")
            lv, sig_map = store.signature_map(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = lv.name
            response.model_spec.version.value = lv.version
            response.metadata["signature_def"].Pack(sig_map)
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        @guarded
        def GetModelStatus(self, request, context):
            return store.status_response(request.model_spec)

    return Prediction(), Models()


class Server:
    """A running embedded server: ``stop()`` ends it (the gRPC port closes)."""

    def __init__(self, root: str | Path, port: int = 8500, host: str = "127.0.0.1", poll_seconds: float = 2.0,
                 batching: bool = True, workers: int = 64, retry_s: float = 2.0, rest_port: int | None = None):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.store = ModelStore(root, batching, retry_s=retry_s)
        self.store.refresh()
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                options=[("grpc.max_receive_message_length", 64 << 20),
                                         ("grpc.max_send_message_length", 64 << 20)])
        prediction, models = _servicers(self.store)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, self.grpc)
        self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port} (in use?)")
        self.grpc.start()
        self.rest, self.rest_port = None, None
        if rest_port is not None:          # TF Serving's REST API (--rest_api_port), same store
            from werkzeug.serving import make_server

            from serving.rest import RestApp

            self.rest = make_server(host, rest_port, RestApp(self.store), threaded=True)
            self.rest_port = self.rest.server_port
            threading.Thread(target=self.rest.serve_forever, daemon=True).start()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, args=(poll_seconds,), daemon=True)
        self._poller.start()

    def _poll(self, seconds: float):
        while not self._stop.wait(seconds):
            try:
                self.store.refresh()
            except Exception as e:            # keep serving what is loaded
                log.error("repository poll failed: %s", e)

    def stop(self, grace: float = 0.5):
        self._stop.set()
        self._poller.join(60.0)      # a poll in flight would otherwise load versions after the stop
        if self.rest:
            self.rest.shutdown()
        self.grpc.stop(grace).wait()
        self.store.stop()

    def wait(self):
        self.grpc.wait_for_termination()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a server started as a process)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
