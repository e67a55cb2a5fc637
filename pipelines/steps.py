"""What each pipeline component does, in the component image: call ``components.<step>.run``
on the artifacts' paths (through the local step cache), then describe the result for the KFP UI
(artifact metadata, Metrics, ClassificationMetrics, Markdown and HTML reports).

The ``@dsl.component`` functions in ``pipelines.ops`` only forward their arguments here, so
this module is ordinary, importable, testable Python.
"""
from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path

from components.core import artifacts
from components.model import loading
from components.core.atomic import write_text
from components.core.digests import tree_sha256
from pipelines.cache import cached


def _describe(artifact, cached_: bool, **metadata) -> None:
    artifact.metadata.update({"sha256": tree_sha256(artifact.path), "cached": cached_, **metadata})


def markdown_table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def extract(modality: str, sources: list, max_quarantine: float, cache_dir: str, examples, report) -> None:
    from components import extract as step
    from components.core import phi
    from components.data import sources as sources_

    chosen = sources_.parse(sources)
    # the data's content, whatever its path (a manifest inside the source folder is part of it)
    described = [{**s.to_dict(), "path": tree_sha256(s.path)} for s in chosen]
    # DICOM sources are pseudonymized under the environment's PHI key: another key, other
    # pseudonyms, so its id (never the key) is part of the cache key
    key = phi.load_key() if any(s.needs_phi_key for s in chosen) else None
    summary, hit = cached(cache_dir, "extract", {"modality": modality, "max_quarantine": max_quarantine,
                                                 "sources": described,
                                                 **({"phi_key_id": phi.key_id(key)} if key else {})},
                          {}, {"examples": examples.path},
                          lambda: step.run(modality, chosen, examples.path, max_quarantine=max_quarantine, phi_key=key))
    _describe(examples, hit, records=summary["records_written"], quarantined=summary["quarantined"],
              sources={s.name: s.path for s in chosen}, sources_sha256={d["name"]: d["path"] for d in described})
    rows = [[name, c["path"], c["inputs"], c["records_written"], c["quarantined"], c["patients"]]
            for name, c in summary["sources"].items()]
    rows.append(["all", "", summary["inputs"], summary["records_written"], summary["quarantined"], summary["patients"]])
    write_text(report.path, f"# Extract: {modality}\n\n" + markdown_table(
        rows, ["source", "path", "inputs", "records written", "quarantined", "patients"]))


def split(seed: int, cache_dir: str, examples, splits, report) -> None:
    from components import split as step

    manifest, hit = cached(cache_dir, "split", {"seed": seed}, {"examples": examples.path}, {"splits": splits.path},
                           lambda: step.run(examples.path, splits.path, seed=seed))
    _split_report(manifest, "Split (patient-grouped, stratified)", report.path)
    _describe(splits, hit, manifest_sha256=tree_sha256(Path(splits.path) / artifacts.MANIFEST),
              **{f"{name}_records": info["records"] for name, info in manifest["splits"].items()})


def _split_report(manifest: dict, title: str, path: str) -> None:
    rows = [[name, info["records"], info.get("patients", ""), info.get("positive_ratio", ""), info["content_sha256"][:16]]
            for name, info in manifest["splits"].items()]
    write_text(path, f"# {title}: {manifest.get('modality', '')}\n\n" + markdown_table(
        rows, ["split", "records", "patients", "positive share", "content sha256"]))


def stain(seed: int, cache_dir: str, splits, normalized, report) -> None:
    from components import stain as step

    reference, hit = cached(cache_dir, "stain", {"seed": seed}, {"splits": splits.path},
                            {"normalized": normalized.path}, lambda: step.run(splits.path, normalized.path, seed=seed))
    manifest = artifacts.read_json(normalized.path, artifacts.MANIFEST)
    _split_report(manifest, "Stain-normalized splits (Macenko, reference fitted on train)", report.path)
    _describe(normalized, hit, manifest_sha256=tree_sha256(Path(normalized.path) / artifacts.MANIFEST),
              **{f"tiles_{how}": n for how, n in reference["tiles"].items()})


def validate(cache_dir: str, splits, validation, report) -> None:
    from components import validate as step

    verdict, hit = cached(cache_dir, "validate", {}, {"splits": splits.path}, {"validation": validation.path},
                          lambda: step.run(splits.path, validation.path))
    write_text(report.path, (Path(validation.path) / "report.md").read_text())
    _describe(validation, hit, ok=verdict["ok"], warnings=len(verdict["warnings"]))


def baselines(modality: str, bootstrap: int, seed: int, cache_dir: str, splits, evaluation, metrics) -> None:
    from components import baseline as step

    results, hit = cached(cache_dir, "baselines", {"modality": modality, "bootstrap": bootstrap, "seed": seed},
                          {"splits": splits.path}, {"evaluation": evaluation.path},
                          lambda: step.run(splits.path, modality, evaluation.path, bootstrap=bootstrap, seed=seed))
    _describe(evaluation, hit, baselines=list(results))
    for name, result in results.items():
        for metric in ("roc_auc", "balanced_accuracy", "f1"):
            m = result["metrics"][metric]
            metrics.log_metric(f"{name}_{metric}", round(m["value"], 4))
            metrics.log_metric(f"{name}_{metric}_ci95_low", round(m["ci_low"], 4))
            metrics.log_metric(f"{name}_{metric}_ci95_high", round(m["ci_high"], 4))


def train(modality: str, backbone: str, strategy: str, training: dict, cache_dir: str, splits, model) -> None:
    from components import train as step

    config = step.TrainConfig(**step.TrainSettings.typed(training), modality=modality, backbone=backbone,
                              strategy=strategy)
    params = asdict(config)
    if config.weights not in ("imagenet", "none"):   # a weights file: its content counts, not its name
        params["weights"] = tree_sha256(config.weights)
    training, hit = cached(cache_dir, "train", params, {"splits": splits.path}, {"model": model.path},
                           lambda: step.run(splits.path, model.path, config))
    _describe(model, hit, model_name=training["model_name"], epochs_run=training["epochs_run"],
              best_val_auc=round(training["best_val_auc"], 4), framework="keras")


def evaluate_and_save_graph(model_dir: str, splits_dir: str, evaluation_dir: str, graph_dir: str | None, *,
                            min_f1: float, collapse_sd: float, bootstrap: int, seed: int) -> dict:
    """The evaluate step's work: evaluation, then (with ``graph_dir``) the serving graph of the
    model just scored, in this process (``components.export.save_graph``), so a model costs one
    TensorFlow start and one model load fewer than as two steps (``python -m bench.steps``)."""
    from components import evaluate as step
    from components import export

    model = loading.load_model(model_dir)
    result = step.run(model_dir, Path(splits_dir) / "test", Path(splits_dir) / "validation", evaluation_dir,
                      min_f1=min_f1, collapse_sd=collapse_sd, bootstrap=bootstrap, seed=seed, model=model)
    if graph_dir is not None:
        export.save_graph(model_dir, evaluation_dir, graph_dir, model=model)
    return result


def evaluate(min_f1: float, collapse_sd: float, bootstrap: int, seed: int, cache_dir: str, model, splits, evaluation,
             metrics, classification, report, graph=None) -> None:
    def compute():
        return evaluate_and_save_graph(model.path, splits.path, evaluation.path, graph.path if graph else None,
                                       min_f1=min_f1, collapse_sd=collapse_sd, bootstrap=bootstrap, seed=seed)

    outputs = {"evaluation": evaluation.path, **({"graph": graph.path} if graph is not None else {})}
    result, hit = cached(cache_dir, "evaluate", {"min_f1": min_f1, "collapse_sd": collapse_sd, "bootstrap": bootstrap,
                                                 "seed": seed},
                         {"model": model.path, "splits": splits.path}, outputs, compute)
    if graph is not None:
        _describe(graph, hit, model_name=result["model_name"], framework="tensorflow-savedmodel", card=False)
    blessing = artifacts.read_blessing(evaluation.path)
    _describe(evaluation, hit, model_name=result["model_name"], blessed=blessing["blessed"])
    _log_metrics(metrics, result)
    for source, measured in result.get("sources", {}).items():
        if len(result["sources"]) > 1:
            _log_metrics(metrics, measured, prefix=f"{source}_")
    metrics.log_metric("threshold", round(result["threshold"], 4))
    metrics.log_metric("blessed", int(blessing["blessed"]))
    _log_classification(Path(evaluation.path), result, classification)
    write_text(report.path, evaluation_html(Path(evaluation.path), result, blessing))


def _log_classification(evaluation_dir: Path, result: dict, classification) -> None:
    """ROC curve and confusion matrix in KFP's own form, so its UI draws them."""
    import numpy as np
    from sklearn.metrics import confusion_matrix, roc_curve

    from components.core import catalog

    from components.evaluation import predictions

    scored = predictions.read(evaluation_dir / artifacts.PREDICTIONS)
    y, p = scored.y, scored.p
    fpr, tpr, thresholds = roc_curve(y, p)
    thresholds = np.minimum(thresholds, 1.0)              # sklearn starts at +inf; JSON cannot hold it
    classification.log_roc_curve(fpr.tolist(), tpr.tolist(), thresholds.tolist())
    modality = result["model_name"].split("-")[0]
    matrix = confusion_matrix(y, (p >= result["threshold"]).astype(int), labels=[0, 1])
    classification.log_confusion_matrix(list(catalog.modality(modality).label_names), matrix.tolist())


def evaluation_html(evaluation_dir: Path, result: dict, blessing: dict) -> str:
    """One page for the KFP UI: metrics with 95 % intervals, the blessing, the pictures inline."""

    rows = "".join(f"<tr><td>{name}</td><td>{m['value']:.3f}</td><td>[{m['ci_low']:.3f}, {m['ci_high']:.3f}]</td></tr>"
                   for name, m in result["metrics"].items())
    pictures = "".join(
        f'<figure><img alt="{p}" src="data:image/png;base64,{base64.b64encode((evaluation_dir / p).read_bytes()).decode()}">'
        f"<figcaption>{p}</figcaption></figure>" for p in artifacts.PICTURES if (evaluation_dir / p).exists())
    verdict = "blessed" if blessing["blessed"] else "not blessed"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{result['model_name']}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 10px}img{max-width:420px}"
            "figure{display:inline-block}</style></head><body>"
            f"<h1>{result['model_name']}</h1><p>{result['records']} test records ({result['positives']} positive); "
            f"threshold {result['threshold']:.3f} chosen on validation ({result['threshold_rule']}); "
            f"<b>{verdict}</b>: {blessing['reason']} ({blessing['rule']}).</p>"
            f"<table><tr><th>metric</th><th>value</th><th>95% CI ({result['confidence']})</th></tr>{rows}</table>"
            f"{pictures}</body></html>")


def gather(cache_dir: str, previous, evaluation, collected) -> None:
    """``collected`` = the evaluations in ``previous`` (if any) and ``evaluation``, one numbered
    subfolder each: the folder a step with a variable number of evaluations reads."""
    import shutil

    from components.core.atomic import staged_dir

    earlier = sorted(Path(previous.path).iterdir()) if previous is not None else []

    def copy():
        with staged_dir(collected.path) as out:
            for i, folder in enumerate(earlier):
                shutil.copytree(folder, out / f"{i:02d}")
            shutil.copytree(evaluation.path, out / f"{len(earlier):02d}")
        return {"evaluations": len(earlier) + 1}

    inputs = {"evaluation": evaluation.path, **({"previous": previous.path} if previous is not None else {})}
    result, hit = cached(cache_dir, "gather", {}, inputs, {"collected": collected.path}, copy)
    _describe(collected, hit, **result)


def _members(collected) -> list[str]:
    return [str(p) for p in sorted(Path(collected.path).iterdir()) if p.is_dir()]


def ensemble(min_f1: float, collapse_sd: float, bootstrap: int, seed: int, cache_dir: str, collected, evaluation,
             metrics) -> None:
    """The cohort ensemble (with one member there is none: the folder says so, and the exports
    carry no ensemble)."""
    from components import ensemble as step
    from components.core.atomic import write_json

    members = _members(collected)
    if len(members) < 2:
        Path(evaluation.path).mkdir(parents=True, exist_ok=True)
        write_json(Path(evaluation.path) / step.ENSEMBLE, {"members": len(members), "none": "one member: no ensemble"})
        _describe(evaluation, False, ensemble=False)
        return
    result, hit = cached(cache_dir, "ensemble", {"min_f1": min_f1, "collapse_sd": collapse_sd, "bootstrap": bootstrap,
                                                 "seed": seed},
                         {f"member_{i}": m for i, m in enumerate(members)}, {"evaluation": evaluation.path},
                         lambda: step.run(members, evaluation.path, bootstrap=bootstrap, seed=seed, min_f1=min_f1,
                                          collapse_sd=collapse_sd))
    _describe(evaluation, hit, model_name=result["model_name"], members=len(members))
    _log_metrics(metrics, result)


def _log_metrics(metrics, result: dict, prefix: str = "") -> None:
    for name, m in result["metrics"].items():
        metrics.log_metric(f"{prefix}{name}", round(m["value"], 4))
        metrics.log_metric(f"{prefix}{name}_ci95_low", round(m["ci_low"], 4))
        metrics.log_metric(f"{prefix}{name}_ci95_high", round(m["ci_high"], 4))


def export(cache_dir: str, model, evaluation, graph, ensemble, saved_model) -> None:
    """The evaluate step's graph with its card: no TensorFlow in this step."""
    from components import ensemble as ensemble_step
    from components import export as step

    cohort = ensemble.path if (Path(ensemble.path) / ensemble_step.ENSEMBLE).exists() and \
        "id" in artifacts.read_json(ensemble.path, ensemble_step.ENSEMBLE) else None
    inputs = {"model": model.path, "evaluation": evaluation.path, "graph": graph.path,
              **({"ensemble": cohort} if cohort else {})}
    card, hit = cached(cache_dir, "export", {}, inputs, {"saved_model": saved_model.path},
                       lambda: step.card(graph.path, model.path, evaluation.path, saved_model.path, cohort))
    _describe(saved_model, hit, model_name=card["model_name"], framework="tensorflow-savedmodel")


def folds(k: int, seed: int, cache_dir: str, examples, folds_out, report) -> None:
    from components import crossval

    summary, hit = cached(cache_dir, "folds", {"k": k, "seed": seed}, {"examples": examples.path},
                          {"folds": folds_out.path}, lambda: crossval.folds(examples.path, folds_out.path, k, seed))
    _describe(folds_out, hit, folds=k, patients=summary["patients"])
    write_text(report.path, f"# Cross-validation folds: {summary['modality']}\n\n" + markdown_table(
        [[t["fold"], len(t["patients"]), t["records"], *t["labels"].values()] for t in summary["tested"]],
        ["fold", "test patients", "test records", *summary["tested"][0]["labels"]]))


def select_fold(index: int, cache_dir: str, folds, splits) -> None:
    import shutil

    from components import crossval

    source = Path(folds.path) / crossval.fold_name(index)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is missing: the folds hold {len(list(Path(folds.path).glob('fold-*')))}")
    shutil.copytree(source, splits.path)
    _describe(splits, False, fold=index)


def pool(bootstrap: int, seed: int, cache_dir: str, collected, evaluation, metrics) -> None:
    from components import crossval

    members = _members(collected)
    result, hit = cached(cache_dir, "pool", {"bootstrap": bootstrap, "seed": seed},
                         {f"fold_{i}": m for i, m in enumerate(members)}, {"evaluation": evaluation.path},
                         lambda: crossval.pool(members, evaluation.path, bootstrap=bootstrap, seed=seed))
    _describe(evaluation, hit, model_name=result["model_name"], folds=len(members))
    _log_metrics(metrics, result)


def challenge(model_repo: str, margin: float, bootstrap: int, seed: int, evaluation, splits, blessing, report) -> None:
    """Not cached: its answer depends on what the repository's stable version is now."""
    from components import challenge as step
    from serving import layout

    name = artifacts.read_json(evaluation.path, artifacts.METRICS)["model_name"]
    result = step.run(evaluation.path, Path(splits.path) / "test", layout.stable_version(model_repo, name),
                      blessing.path, margin=margin, bootstrap=bootstrap, seed=seed)
    blessing.metadata.update({"blessed": result["blessed"], "baseline_version": result["baseline_version"]})
    c = result.get("comparison") or {}
    rows = [[result["baseline_version"] or "none", f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
             if c else "", result["blessed"], result["reason"]]]
    write_text(report.path, f"# Champion and challenger: {result['model_name']}\n\n" + markdown_table(
        rows, ["stable version", "AUC difference [95% CI]", "blessed for canary", "reason"]))


def push(model_repo: str, keep: int, saved_model, evaluation, blessing, record) -> None:
    """Push an export blessed by evidence (challenge) into the repository; a refused one is
    skipped, and the record says why."""
    from serving import repository

    canary = artifacts.read_blessing(blessing.path)
    name = artifacts.read_json(evaluation.path, artifacts.METRICS)["model_name"]
    if canary["blessed"]:
        result = repository.push(saved_model.path, model_repo, keep=keep, canary=canary)
        outcome = {"model": name, "pushed": result.pushed, "version": result.version, "reason": result.reason}
    else:
        outcome = {"model": name, "pushed": False, "version": None,
                   "reason": f"not blessed: {canary['reason']} ({canary['rule']})"}
    outcome.update(model_repo=model_repo, export_sha256=repository.export_digest(Path(saved_model.path)))
    record.metadata.update(outcome)
    write_text(record.path, f"# Push: {name}\n\n" + markdown_table([[outcome["pushed"], outcome["version"], outcome["reason"]]],
                                                          ["pushed", "version", "reason"]))
