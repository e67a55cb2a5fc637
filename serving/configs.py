"""``<root>/models.config`` and ``<root>/batching.config`` in TensorFlow Serving's text formats, so
the official ``tensorflow/serving`` image and the embedded server read the same repository."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from components.core.atomic import write_text
from serving import protos
from serving.layout import labels, models, versions

MODELS_CONFIG = "models.config"

BATCHING_CONFIG = "batching.config"

@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 16
    batch_timeout_micros: int = 5000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100


def model_server_config(root: str | Path, base_path: str | None = None):
    """``models.config``: every model, its kept versions served, stable/canary labels."""
    config = protos.ModelServerConfig()
    for name in models(root):
        available = versions(root, name)
        entry = config.model_config_list.config.add(
            name=name, base_path=f"{base_path.rstrip('/')}/{name}" if base_path else str((Path(root) / name).resolve()),
            model_platform="tensorflow")
        current = labels(root, name)
        served = sorted(set(current.values())) or available[-1:]
        entry.model_version_policy.specific.versions.extend(served)
        for label, version in current.items():
            entry.version_labels[label] = version
    return config


def batching_parameters(batching: Batching = Batching()):
    params = protos.BatchingParameters()
    params.max_batch_size.value = batching.max_batch_size
    params.batch_timeout_micros.value = batching.batch_timeout_micros
    params.num_batch_threads.value = batching.num_batch_threads
    params.max_enqueued_batches.value = batching.max_enqueued_batches
    return params


def write_configs(root: str | Path, base_path: str | None = None, batching: Batching | None = None) -> None:
    root = Path(root)
    write_text(root / MODELS_CONFIG, text_format.MessageToString(model_server_config(root, base_path)))
    if batching is not None or not (root / BATCHING_CONFIG).exists():
        write_text(root / BATCHING_CONFIG, text_format.MessageToString(batching_parameters(batching or Batching())))


def read_models_config(root: str | Path):
    return text_format.Parse((Path(root) / MODELS_CONFIG).read_text(), protos.ModelServerConfig())


def read_batching(root: str | Path) -> Batching:
    path = Path(root) / BATCHING_CONFIG
    if not path.exists():
        return Batching()
    p = text_format.Parse(path.read_text(), protos.BatchingParameters())
    d = Batching()
    return Batching(p.max_batch_size.value or d.max_batch_size, p.batch_timeout_micros.value or d.batch_timeout_micros,
                    p.num_batch_threads.value or d.num_batch_threads, p.max_enqueued_batches.value or d.max_enqueued_batches)
