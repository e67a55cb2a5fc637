"""Train one (modality, backbone, strategy) on the splits.

With pretrained weights (``imagenet`` or a weights file) the report's recipe:
- ``unfrozen``: every layer trainable from epoch 0, Adam at ``--learning-rate`` with
  ReduceLROnPlateau (x0.3 after 3 flat epochs);
- ``progressive``: the backbone frozen for ``--head-epochs`` (head warm-up), then conv4+conv5
  (ResNet50, DenseNet121) or block5 (VGG16) unfrozen and ``--epochs`` more at a 10x lower
  learning rate with cosine decay (floor 10 % of that).

From scratch (``--weights none``) a frozen backbone holds random features, so training a head
on it, or leaving conv1-3 random for good, teaches nothing. There both strategies train every
layer in every stage, with AdamW (``--weight-decay``), a linear warm-up over
``--warmup-epochs`` and cosine decay to zero over the whole run:
- ``unfrozen``: ``--epochs`` epochs at ``--image-size``;
- ``progressive`` is progressive *resizing*: the first half of the epochs at half the size
  (at least 32 px), the rest at ``--image-size``, one optimizer and schedule throughout. The
  cheap low-resolution epochs learn coarse shape and texture first; the full-size ones refine.

Deterministic on CPU: the same splits, settings and seed give the same weights on every run
and machine of the same CPU family (TensorFlow's op determinism, a seeded shuffle of records read
in a fixed order, stateless augmentation seeded per image and epoch, seeded initialisation and
dropout, ``--threads`` threads per op whatever the machine has, Eigen's CPU kernels instead of
oneDNN's (at these image sizes about as fast), and denormals flushed on every thread, however
busy the machine: ``components.model.repeatable`` says why each). ``training.json`` records the
threads, kernels and denormal mode a run used. On a GPU, cuDNN's
and XLA's kernels are made deterministic by the same switch where they have such a kernel, but
mixed precision, another GPU model or another number of GPUs (MirroredStrategy's reductions)
still change the last bits, so a GPU run repeats on the same machine, not across machines.

Both: early stopping on validation AUC (``--patience``) with the best epoch's weights restored,
class weights from the train prevalence, the modality's augmentation policy (or
``--augmentation``), history (JSON) and TensorBoard logs, one ``[epoch]`` line per epoch on
stdout (the pipeline runner shows them), the model saved as ``model.keras`` with
``training.json`` (every parameter, the data it saw). Mixed precision and XLA when a GPU is
present; MirroredStrategy across several GPUs. A run of fewer than ``EAGER_BELOW_STEPS``
optimizer steps executes eagerly: tracing the train step costs about a minute for DenseNet121
on 2 CPU cores (0.9 s per epoch after that, 9 s eagerly, at 32 px on 84 images), so a short demo
or test run finishes several times sooner doing the same arithmetic.

    python -m components.train --splits DIR --modality M --backbone B --strategy S --out DIR
"""
from __future__ import annotations

import argparse
import datetime
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from components.core import artifacts, catalog, cli
from components.model import repeatable
from components.core.atomic import staged_dir, write_json

EAGER_BELOW_STEPS = 20


def _opt(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass
class TrainSettings:
    """Every training hyper-parameter, declared once: the CLI options of components.train and of
    the pipelines, the pipelines' ``training`` parameter and the study profiles are made from
    these fields (always passed by keyword)."""
    image_size: int = _opt(224, "square input size in pixels")
    epochs: int = _opt(40, "unfrozen: all epochs; progressive: epochs after the head warm-up "
                           "(pretrained) or in all (from scratch, half of them at half size)")
    head_epochs: int = _opt(5, "progressive with pretrained weights: head-only warm-up epochs")
    batch_size: int = _opt(32, "images per optimizer step")
    learning_rate: float = _opt(1e-4, "peak learning rate")
    weights: str = _opt("imagenet", "imagenet, none, or a path to a notop .h5 weights file")
    patience: int = _opt(5, "early stopping: epochs without a better validation AUC")
    seed: int = _opt(0, "seed of initialisation, shuffling and augmentation")
    weight_decay: float = _opt(1e-4, "from scratch: AdamW weight decay")
    warmup_epochs: float = _opt(1.0, "from scratch: linear learning-rate warm-up epochs (a fraction is fine)")
    augmentation: str = _opt("", "training augmentation policy (components.model.inputs); empty: the modality's")
    profile: str = _opt("", "the study profile these settings come from (recorded in the model card)")
    threads: int = _opt(1, "TensorFlow threads per op on CPU: a reduction's result depends on how many "
                           "threads share it, so this is a setting like the seed (0: all cores, repeatable "
                           "only on machines with as many)")

    @staticmethod
    def typed(values: dict) -> dict:
        """``values`` with each setting cast to its field's type: a KFP dict parameter travels
        as a protobuf Struct, where every number is a float (a seed of 0.0 is refused)."""
        kinds = {f.name: type(f.default) for f in fields(TrainSettings)}
        return {k: kinds[k](v) if k in kinds else v for k, v in values.items()}

    @property
    def from_scratch(self) -> bool:
        return self.weights in ("", "none", None)


@dataclass(kw_only=True)
class TrainConfig(TrainSettings):
    """What one training task trains: a model of the catalog, with its settings."""
    modality: str
    backbone: str
    strategy: str

    def stages(self) -> list[dict]:
        """The training stages as (what trains, at which size, for how many epochs)."""
        if self.from_scratch:
            if self.strategy == "unfrozen":
                return [{"stage": "all layers", "trains": "all", "image_size": self.image_size, "epochs": self.epochs}]
            low = min(self.image_size, max(32, self.image_size // 2))
            first = self.epochs // 2
            return [{"stage": "all layers, half size", "trains": "all", "image_size": low, "epochs": first},
                    {"stage": "all layers, full size", "trains": "all", "image_size": self.image_size,
                     "epochs": self.epochs - first}]
        if self.strategy == "unfrozen":
            return [{"stage": "all layers", "trains": "all", "image_size": self.image_size, "epochs": self.epochs}]
        return [{"stage": "head warm-up", "trains": "head", "image_size": self.image_size, "epochs": self.head_epochs},
                {"stage": "top blocks unfrozen", "trains": "top", "image_size": self.image_size, "epochs": self.epochs}]


def _distribution():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    return strategy, len(gpus)


def class_weights(negatives: int, positives: int) -> dict[int, float]:
    """Balanced weights: each class contributes half of the loss (14 % positives -> 1 : 3.1)."""
    if negatives == 0 or positives == 0:
        raise cli.UserError(f"the train split has {negatives} negatives and {positives} positives; "
                            "both classes are needed (run components.validate)")
    n = negatives + positives
    return {0: n / (2 * negatives), 1: n / (2 * positives)}


class EpochLine:
    """One ``[epoch]`` line per finished epoch on stdout, flushed at once: in a pipeline run the
    task's stdout goes to the run log, where the runner picks these lines up as progress."""

    def __new__(cls, name: str, total: int):
        import keras

        class _EpochLine(keras.callbacks.Callback):
            started = None

            def on_train_begin(self, logs=None):
                self.started = self.started or time.monotonic()     # one clock across the stages' fits

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                shown = " ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "auc", "val_loss", "val_auc") if k in logs)
                print(f"[epoch] {name} {epoch + 1}/{total} {time.monotonic() - self.started:.0f}s {shown}", flush=True)

        return _EpochLine()


def run(splits: str | Path, out: str | Path, config: TrainConfig) -> dict:
    repeatable.before_tensorflow()
    import keras
    import tensorflow as tf

    from components.model import inputs, backbones

    name = catalog.model_name(config.modality, config.backbone, config.strategy)
    inputs.augmentation(config.augmentation or catalog.modality(config.modality).augmentation)
    threads = repeatable.pin_threads(tf, config.threads)
    flushed = repeatable.flush_denormals()
    tf.config.experimental.enable_op_determinism()
    splits = Path(splits)
    strategy, n_gpus = _distribution()
    negatives, positives = inputs.count_labels(splits / "train")
    weights = class_weights(negatives, positives)
    stages = config.stages()
    steps_per_epoch = inputs.steps(negatives + positives, config.batch_size)
    planned_epochs = sum(stage["epochs"] for stage in stages)
    eager = steps_per_epoch * planned_epochs < EAGER_BELOW_STEPS
    started = datetime.datetime.now(datetime.timezone.utc)
    sizes = {stage["image_size"] for stage in stages}

    def datasets(size, stage_seed):
        return (inputs.dataset(splits / "train", config.modality, size, config.batch_size, True, stage_seed,
                             augment_with=config.augmentation or None),
                inputs.dataset(splits / "validation", config.modality, size, config.batch_size, False))

    with staged_dir(out) as stage_dir:
        with strategy.scope():
            # one model for every stage: a size-agnostic one when the stages differ in size
            model = backbones.build(config.backbone, config.image_size if len(sizes) == 1 else None,
                                 config.weights, config.seed)

        def compile_model(learning_rate, optimizer="adam"):
            with strategy.scope():
                opt = (keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
                       if optimizer == "adamw" else keras.optimizers.Adam(learning_rate))
                model.compile(optimizer=opt, loss="binary_crossentropy",
                              metrics=[keras.metrics.AUC(name="auc"), "accuracy",
                                       keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")],
                              jit_compile=n_gpus > 0 and not eager, run_eagerly=eager)

        epoch_line = EpochLine(name, planned_epochs)

        def fit(size, epochs, initial_epoch, reduce_on_plateau=False):
            # each stage its own augmentation stream, the same on every run
            train_ds, val_ds = datasets(size, config.seed * 1000 + initial_epoch)
            callbacks = [
                keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config.patience,
                                              restore_best_weights=True),
                keras.callbacks.TensorBoard(str(stage_dir / "tensorboard")),
                epoch_line,
            ]
            if reduce_on_plateau:
                callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.3, patience=3))
            return model.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                             class_weight=weights, callbacks=callbacks, verbose=1 if cli.is_terminal() else 0)

        history, record = {}, []
        peak = config.learning_rate
        if config.from_scratch:
            peak *= backbones.BACKBONES[config.backbone].scratch_learning_rate_scale
            backbones.unfreeze_all(model)
            total_steps = steps_per_epoch * planned_epochs
            warmup = min(round(steps_per_epoch * config.warmup_epochs), total_steps // 2)
            compile_model(keras.optimizers.schedules.CosineDecay(
                0.0 if warmup else peak, decay_steps=max(1, total_steps - warmup),
                warmup_target=peak if warmup else None, warmup_steps=warmup), "adamw")
            for stage in stages:
                if stage["epochs"] <= 0:
                    continue
                _merge(history, fit(stage["image_size"], stage["epochs"], len(history.get("loss", []))).history)
                record.append({**stage, "trainable_layers": sum(l.trainable for l in model.layers)})
        elif config.strategy == "unfrozen":
            backbones.unfreeze_all(model)
            compile_model(config.learning_rate)
            _merge(history, fit(config.image_size, config.epochs, 0, reduce_on_plateau=True).history)
            record.append({**stages[0], "trainable_layers": sum(l.trainable for l in model.layers)})
        else:
            backbones.freeze_backbone(model)
            compile_model(config.learning_rate)
            _merge(history, fit(config.image_size, config.head_epochs, 0, reduce_on_plateau=True).history)
            record.append({**stages[0], "trainable_layers": sum(l.trainable for l in model.layers)})
            opened = backbones.unfreeze_top(model, config.backbone)
            compile_model(keras.optimizers.schedules.CosineDecay(config.learning_rate / 10,
                                                                 decay_steps=steps_per_epoch * config.epochs, alpha=0.1))
            _merge(history, fit(config.image_size, config.epochs, len(history.get("loss", []))).history)
            record.append({**stages[1], "from_layer": opened[0], "layers_unfrozen": len(opened)})

        model.save(stage_dir / artifacts.MODEL)
        write_json(stage_dir / artifacts.HISTORY, history)
        write_json(stage_dir / artifacts.TRAINING, {
            "model_name": name,
            "config": asdict(config), "class_weights": weights,
            "train_examples": {"negatives": negatives, "positives": positives},
            "splits": str(splits.resolve()), "split_manifest": _manifest_hashes(splits),
            # the stain reference the training tiles were normalized with: export puts the same
            # normalization in the serving graph, so raw uploads are treated like training tiles
            "stain": _manifest(splits).get("stain"),
            "stages": record, "peak_learning_rate": peak, "epochs_run": len(history.get("loss", [])),
            "best_val_auc": max(history.get("val_auc", [0.0])), "gpus": n_gpus,
            "mixed_precision": n_gpus > 0, "threads_per_op": threads, "onednn": repeatable.onednn(),
            "denormals_flushed_on_every_thread": flushed,
            "execution": "eager" if eager else "graph", "started_utc": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
            "tensorflow": tf.__version__, "keras": keras.__version__,
        })
    return artifacts.read_json(out, artifacts.TRAINING)


def _merge(history: dict, new: dict) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(float(v) for v in values)


def _manifest(splits: Path) -> dict:
    return artifacts.read_json(splits, artifacts.MANIFEST, default={})


def _manifest_hashes(splits: Path) -> dict:
    return {name: info.get("content_sha256") for name, info in _manifest(splits).get("splits", {}).items()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", required=True, help="output of components.split (or components.stain)")
    ap.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    ap.add_argument("--backbone", required=True, choices=list(catalog.BACKBONES))
    ap.add_argument("--strategy", required=True, choices=list(catalog.STRATEGIES))
    ap.add_argument("--out", required=True)
    cli.add_options(ap, TrainConfig, skip=("modality", "backbone", "strategy"))
    return ap


def _cli(args, _):
    config = cli.options_to(TrainConfig, args)
    result = run(args.splits, args.out, config)
    print(f"trained {result['model_name']}: {result['epochs_run']} epochs, best validation AUC "
          f"{result['best_val_auc']:.3f}; model: {Path(args.out) / 'model.keras'}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
