"""Export a trained, evaluated model as a TF Serving SavedModel.

Signatures (decoding, channel handling, Macenko stain normalization with the train-fitted
reference when the training tiles had it, resizing and the modality's preprocessing are in the
graph, the same functions and reference training used):
- ``serving_default``: ``image_bytes`` (string batch of PNG/JPEG/BMP) -> ``probability``
  (float32), ``label`` (int64, at the threshold chosen on validation), ``threshold`` (float32);
- ``explain``: ``image_bytes`` -> ``heatmap`` (Grad-CAM of the predicted class on the last
  convolutional block, image_size x image_size, 0..1) and ``probability``.
``assets.extra/`` holds ``model_card.json``, ``tf_serving_warmup_requests`` and the evaluation's
pictures (ROC, confusion matrix, calibration, learning curves). With ``--ensemble`` (the cohort
ensemble's evaluation, ``components.ensemble``) the card also carries the ensemble's members and
validation threshold, which the gateway's compare applies to the three served probabilities.

    python -m components.export --model DIR --evaluation DIR --out DIR [--ensemble DIR]

In two halves, as the pipeline runs it: ``--graph-only`` writes the SavedModel without its card
(the evaluate step does this with the model it has just scored, in the same process), and
``--graph DIR`` copies that graph and adds the card, without TensorFlow, after the cohort
ensemble the card names.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from components.core import artifacts, cli
from components.core.atomic import staged_dir, write_json
from components.model import card as model_card


def _inputs(model_dir: Path, evaluation_dir: Path) -> tuple[dict, dict]:
    training = artifacts.read_json(model_dir, artifacts.TRAINING)
    evaluation = artifacts.read_json(evaluation_dir, artifacts.METRICS)
    if evaluation["model_name"] != training["model_name"]:
        raise cli.UserError(f"{evaluation_dir} evaluated {evaluation['model_name']}, not {training['model_name']}")
    return training, evaluation


def _write_card(stage: Path, training: dict, evaluation: dict, evaluation_dir: Path,
                ensemble_dir: Path | None) -> dict:
    cohort = model_card.ensemble_entry(ensemble_dir) if ensemble_dir else None
    if cohort and training["model_name"] not in cohort["members"]:
        raise cli.UserError(f"{ensemble_dir} is the ensemble of {cohort['members']}, not of {training['model_name']}")
    card = model_card.build(training, evaluation, artifacts.read_blessing(evaluation_dir), cohort)
    write_json(stage / "assets.extra" / artifacts.MODEL_CARD, card)
    for picture in artifacts.PICTURES:            # shown on the gateway's model page
        if (evaluation_dir / picture).exists():
            shutil.copy(evaluation_dir / picture, stage / "assets.extra" / picture)
    return card


def save_graph(model_dir: str | Path, evaluation_dir: str | Path, out: str | Path, model=None) -> dict:
    """TensorFlow's half of an export: the SavedModel with its signatures and warmup requests,
    no card. The pipeline's evaluate step calls it with the model it has just scored, so a model
    costs one TensorFlow process after training, not two; ``card`` finishes the export."""
    model_dir, evaluation_dir = Path(model_dir), Path(evaluation_dir)
    training, evaluation = _inputs(model_dir, evaluation_dir)
    from components.model import graph, loading

    with staged_dir(out) as stage:
        graph.save(stage, model if model is not None else loading.load_model(model_dir), training, evaluation)
    return graph.facts(training, evaluation)


def card(graph_dir: str | Path, model_dir: str | Path, evaluation_dir: str | Path, out: str | Path,
         ensemble_dir: str | Path | None = None) -> dict:
    """The export from a saved graph: a copy of it with the model card and the evaluation's
    pictures. No TensorFlow: it runs after the cohort ensemble, which the card names."""
    graph_dir, model_dir, evaluation_dir = Path(graph_dir), Path(model_dir), Path(evaluation_dir)
    training, evaluation = _inputs(model_dir, evaluation_dir)
    from components.model import graph

    built = artifacts.read_json(graph_dir / "assets.extra", artifacts.GRAPH, default={})
    wanted = graph.facts(training, evaluation)
    if built != wanted:
        raise cli.UserError(f"{graph_dir} was not saved from {model_dir} with the threshold and temperature of "
                            f"{evaluation_dir} ({built} != {wanted}); save it again with components.export --graph-only")
    with staged_dir(out) as stage:
        shutil.copytree(graph_dir, stage, dirs_exist_ok=True)
        return _write_card(stage, training, evaluation, evaluation_dir, Path(ensemble_dir) if ensemble_dir else None)


def run(model_dir: str | Path, evaluation_dir: str | Path, out: str | Path, ensemble_dir: str | Path | None = None) -> dict:
    """The whole export in one process: graph and card."""
    model_dir, evaluation_dir = Path(model_dir), Path(evaluation_dir)
    from components.model import graph, loading

    training, evaluation = _inputs(model_dir, evaluation_dir)
    model = loading.load_model(model_dir)
    with staged_dir(out) as stage:
        graph.save(stage, model, training, evaluation)
        return _write_card(stage, training, evaluation, evaluation_dir, Path(ensemble_dir) if ensemble_dir else None)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="output folder of components.train")
    ap.add_argument("--evaluation", required=True, help="output folder of components.evaluate")
    ap.add_argument("--out", required=True, help="SavedModel folder to write")
    ap.add_argument("--ensemble", help="the cohort ensemble's evaluation folder (components.ensemble)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--graph-only", action="store_true", help="write the graph without its card (TensorFlow's half)")
    how.add_argument("--graph", help="finish the export from this graph (--graph-only's output): no TensorFlow")
    return ap


def _cli(a, _):
    if a.graph_only:
        name = save_graph(a.model, a.evaluation, a.out)["model_name"]
        print(f"saved the serving graph of {name} to {a.out} (no card yet: --graph {a.out} adds it)")
        return
    done = card(a.graph, a.model, a.evaluation, a.out, a.ensemble) if a.graph else run(a.model, a.evaluation, a.out, a.ensemble)
    print(f"exported {done['model_name']} to {a.out}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
