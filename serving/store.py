"""The versions the model server holds: loading and warming each one, the roll-out policy that
keeps a serving version until its successor is available, retries with back-off, version labels,
and the look-ups every protocol shares (predict, signatures, status)."""
from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from components.core.artifacts import WARMUP_FILE
from serving.batching import Batcher
from serving.configs import MODELS_CONFIG, Batching, read_batching, read_models_config
from serving.errors import ServingError, reason_of
from serving.layout import models, versions

log = logging.getLogger("serving")


class LoadedVersion:
    """One version, loaded and warmed. The batchers (and their threads) are made only after the
    warm-up requests all succeeded: a version that fails to load leaves nothing running behind."""

    def __init__(self, name: str, version: int, path: Path, batching: Batching, batching_on: bool):
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

        path = self.path / "assets.extra" / WARMUP_FILE
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
        LoadedVersion("verify", 0, Path(path), Batching(), batching_on=False).stop(drain=False)
    except Exception as e:      # any failure to load is the reason, not a crash of the push
        return reason_of(f"{type(e).__name__}: {e}")
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
        if (self.root / MODELS_CONFIG).exists():
            config = read_models_config(self.root)
            return {c.name: (sorted(c.model_version_policy.specific.versions) or versions(self.root, c.name)[-1:],
                             dict(c.version_labels)) for c in config.model_config_list.config}
        return {m: (versions(self.root, m)[-1:], {}) for m in models(self.root)}

    def _load(self, name: str, version: int, batching: Batching) -> None:
        failure = self.failures.get((name, version))
        if failure and time.monotonic() < failure.retry_at:
            return
        try:
            lv = LoadedVersion(name, version, self.root / name / str(version), batching, self.batching_on)
        except Exception as e:     # a broken export must not take the server down
            attempts = failure.attempts + 1 if failure else 1
            delay = min(self.retry_max_s, self.retry_s * 2 ** (attempts - 1))
            message = reason_of(str(e))
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
        batching = read_batching(self.root)
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
