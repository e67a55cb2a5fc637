"""Train one (modality, backbone, strategy) on the splits.

- ``unfrozen``: every layer trainable from epoch 0, Adam at ``--learning-rate`` with
  ReduceLROnPlateau (x0.3 after 3 flat epochs).
- ``progressive``: the backbone frozen for ``--head-epochs`` (head warm-up), then conv4+conv5
  (ResNet50, DenseNet121) or block5 (VGG16) unfrozen and ``--epochs`` more at a 10x lower
  learning rate with cosine decay (floor 10 % of that).
Both: early stopping on validation AUC (patience 5) with the best epoch's weights restored,
class weights from the train prevalence, history (JSON) and TensorBoard logs, the model saved
as ``model.keras`` with ``training.json`` (every parameter, the data it saw). Mixed precision
and XLA when a GPU is present; MirroredStrategy across several GPUs. A run of fewer than
``EAGER_BELOW_STEPS`` optimizer steps executes eagerly: tracing the train step costs about a
minute for DenseNet121 on 2 CPU cores (0.9 s per epoch after that, 9 s eagerly, at 32 px on 84
images), so a short demo or test run finishes several times sooner doing the same arithmetic.

    python -m components.train --splits DIR --modality M --backbone B --strategy S --out DIR
"""
from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from components import catalog, cli
from components.atomic import staged_dir, write_json

EAGER_BELOW_STEPS = 20


@dataclass
class TrainConfig:
    modality: str
    backbone: str
    strategy: str
    image_size: int = 224
    epochs: int = 40
    head_epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-4
    weights: str = "imagenet"
    patience: int = 5
    seed: int = 0


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


def run(splits: str | Path, out: str | Path, config: TrainConfig) -> dict:
    import keras
    import tensorflow as tf

    from components import data, models

    catalog.model_name(config.modality, config.backbone, config.strategy)
    splits = Path(splits)
    strategy, n_gpus = _distribution()
    negatives, positives = data.count_labels(splits / "train")
    weights = class_weights(negatives, positives)
    train_ds = data.dataset(splits / "train", config.modality, config.image_size, config.batch_size, True, config.seed)
    val_ds = data.dataset(splits / "validation", config.modality, config.image_size, config.batch_size, False)
    steps_per_epoch = data.steps(negatives + positives, config.batch_size)
    planned_epochs = config.epochs + (config.head_epochs if config.strategy == "progressive" else 0)
    eager = steps_per_epoch * planned_epochs < EAGER_BELOW_STEPS
    started = datetime.datetime.now(datetime.timezone.utc)

    with staged_dir(out) as stage:
        with strategy.scope():
            model = models.build(config.backbone, config.image_size, config.weights, config.seed)

        def compile_and_fit(learning_rate, epochs, initial_epoch, reduce_on_plateau):
            with strategy.scope():
                model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                              metrics=[keras.metrics.AUC(name="auc"), "accuracy",
                                       keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")],
                              jit_compile=n_gpus > 0 and not eager, run_eagerly=eager)
            callbacks = [
                keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config.patience,
                                              restore_best_weights=True),
                keras.callbacks.TensorBoard(str(stage / "tensorboard")),
            ]
            if reduce_on_plateau:
                callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.3, patience=3))
            return model.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                             class_weight=weights, callbacks=callbacks, verbose=1 if cli.is_terminal() else 2)

        history, stages = {}, []
        if config.strategy == "unfrozen":
            models.unfreeze_all(model)
            stages.append({"stage": "all layers", "trainable_layers": sum(l.trainable for l in model.layers)})
            _merge(history, compile_and_fit(config.learning_rate, config.epochs, 0, True).history)
        else:
            models.freeze_backbone(model)
            stages.append({"stage": "head warm-up", "trainable_layers": sum(l.trainable for l in model.layers)})
            _merge(history, compile_and_fit(config.learning_rate, config.head_epochs, 0, True).history)
            opened = models.unfreeze_top(model, config.backbone)
            stages.append({"stage": "top blocks unfrozen", "from_layer": opened[0], "layers_unfrozen": len(opened)})
            done = len(history.get("loss", []))
            schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate / 10,
                                                              decay_steps=steps_per_epoch * config.epochs, alpha=0.1)
            _merge(history, compile_and_fit(schedule, config.epochs, done, False).history)

        model.save(stage / "model.keras")
        write_json(stage / "history.json", history)
        write_json(stage / "training.json", {
            "model_name": catalog.model_name(config.modality, config.backbone, config.strategy),
            "config": asdict(config), "class_weights": weights,
            "train_examples": {"negatives": negatives, "positives": positives},
            "splits": str(splits.resolve()), "split_manifest": _manifest_hashes(splits),
            # the stain reference the training tiles were normalized with: export puts the same
            # normalization in the serving graph, so raw uploads are treated like training tiles
            "stain": _manifest(splits).get("stain"),
            "stages": stages, "epochs_run": len(history.get("loss", [])),
            "best_val_auc": max(history.get("val_auc", [0.0])), "gpus": n_gpus,
            "mixed_precision": n_gpus > 0, "execution": "eager" if eager else "graph", "started_utc": started.isoformat(timespec="seconds"),
            "tensorflow": tf.__version__, "keras": keras.__version__,
        })
    return json.loads((Path(out) / "training.json").read_text())


def _merge(history: dict, new: dict) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(float(v) for v in values)


def _manifest(splits: Path) -> dict:
    path = splits / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _manifest_hashes(splits: Path) -> dict:
    return {name: info.get("content_sha256") for name, info in _manifest(splits).get("splits", {}).items()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", required=True, help="output of components.split (or components.stain)")
    ap.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    ap.add_argument("--backbone", required=True, choices=list(catalog.BACKBONES))
    ap.add_argument("--strategy", required=True, choices=list(catalog.STRATEGIES))
    ap.add_argument("--out", required=True)
    d = TrainConfig("", "", "")
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument("--epochs", type=int, default=d.epochs, help="unfrozen: all epochs; progressive: epochs after unfreezing")
    ap.add_argument("--head-epochs", type=int, default=d.head_epochs, help="progressive: head-only warm-up epochs")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--learning-rate", type=float, default=d.learning_rate)
    ap.add_argument("--weights", default=d.weights, help="imagenet, none, or a path to a notop .h5 weights file")
    ap.add_argument("--patience", type=int, default=d.patience)
    ap.add_argument("--seed", type=int, default=d.seed)
    return ap


def _cli(args, _):
    config = TrainConfig(args.modality, args.backbone, args.strategy, args.image_size, args.epochs, args.head_epochs,
                         args.batch_size, args.learning_rate, args.weights, args.patience, args.seed)
    result = run(args.splits, args.out, config)
    print(f"trained {result['model_name']}: {result['epochs_run']} epochs, best validation AUC "
          f"{result['best_val_auc']:.3f}; model: {Path(args.out) / 'model.keras'}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
