"""The audit trail of a local run: ``manifest.json`` in the run's folder, and its verification.

The manifest names the run, the pipeline (its compiled YAML and that file's sha256), every
parameter, the code version, the input data (sha256 and counts), the split manifest's hash,
every artifact file with its sha256, each model's metrics with 95 % intervals, and what was
pushed to the model repository as which version. ``audit`` re-hashes everything and names each
file that changed, vanished or appeared, and checks the pushed versions still hold the export
the run produced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from components.core import artifacts, cli
from components.split import SPLITS
from components.core.atomic import write_json
from components.model.card import code_version
from components.core.digests import file_digests, sha256_file, tree_sha256
from pipelines.cache import code_sha256

MANIFEST = artifacts.MANIFEST
NOT_ARTIFACTS = {MANIFEST, "pipeline.yaml", "run.log"}


def pipeline_spec(spec_path: str | Path) -> dict:
    """The PipelineSpec document of a compiled YAML (a second document holds the platform spec)."""
    return next(yaml.safe_load_all(Path(spec_path).read_text()))


def task_names(spec_path: str | Path) -> dict[str, str]:
    """Local task folder (the component name without 'comp-') -> the task's display name."""
    spec = pipeline_spec(spec_path)
    return {t["componentRef"]["name"].removeprefix("comp-"): t["taskInfo"]["name"]
            for t in spec["root"]["dag"]["tasks"].values()}


def _executor_outputs(task_dir: Path) -> dict[str, dict]:
    """Each output artifact's metadata, as the KFP executor recorded it."""
    path = task_dir / "executor_output.json"
    if not path.exists():
        return {}
    artifacts = json.loads(path.read_text()).get("artifacts", {})
    return {name: (a.get("artifacts") or [{}])[0].get("metadata", {}) for name, a in artifacts.items()}


def write_manifest(run_dir: Path, *, modality: str, arguments: dict, settings: dict, sources: list,
                   started: float) -> dict:
    """``sources``: the run's ``components.data.sources.Source`` list (each re-hashed here)."""
    spec_path = run_dir / "pipeline.yaml"
    names = task_names(spec_path)
    tasks, metrics, baselines, pushed, split_manifest, extract = {}, {}, {}, [], None, {}
    ensembles, out_of_fold = {}, {}
    for task_dir in sorted(p for p in run_dir.glob("*/*") if p.is_dir() and p.parent.name != "cache"):
        meta = _executor_outputs(task_dir)
        outputs = {}
        for out in sorted(p for p in task_dir.iterdir() if p.name != "executor_output.json"):
            outputs[out.name] = {"path": out.relative_to(run_dir).as_posix(), "metadata": meta.get(out.name, {}),
                                 "files": file_digests(out)}
        component = task_dir.name
        tasks[component] = {"task": names.get(component, component), "outputs": outputs}
        if (task_dir / "evaluation" / artifacts.METRICS).exists():
            result = artifacts.read_json(task_dir / "evaluation", artifacts.METRICS)
            entry = {"threshold": result["threshold"], "records": result["records"], "metrics": result["metrics"]}
            if "folds" in result:                         # the pooled out-of-fold evaluation
                out_of_fold[result["model_name"]] = {**entry, "folds": result["folds"]}
            else:
                blessing = artifacts.read_blessing(task_dir / "evaluation")
                entry.update(blessed=blessing["blessed"], blessing_rule=blessing["rule"])
                (ensembles if "ensemble" in result else metrics)[result["model_name"]] = entry
        for path in sorted((task_dir / "evaluation").glob(f"*/{artifacts.METRICS}")):      # the baselines
            result = json.loads(path.read_text())
            baselines[result["model_name"]] = {"threshold": result["threshold"], "metrics": result["metrics"]}
        if "record" in outputs:
            pushed.append(meta.get("record", {}))
        if "examples" in outputs and component.startswith("extract"):
            extract = json.loads((task_dir / "examples" / "summary.json").read_text())
        if "splits" in outputs and (task_dir / "splits" / artifacts.MANIFEST).exists():
            split_manifest = task_dir / "splits" / artifacts.MANIFEST
    split_info = json.loads(split_manifest.read_text()) if split_manifest else {}
    manifest = {
        "run_id": run_dir.name, "status": "succeeded",
        "started_utc": _utc(started), "finished_utc": _utc(time.time()),
        "pipeline": {"name": pipeline_spec(spec_path)["pipelineInfo"]["name"], "modality": modality,
                     "spec": spec_path.name, "spec_sha256": sha256_file(spec_path)},
        "parameters": arguments, "settings": settings,
        "code": {"version": code_version(), "sources_sha256": code_sha256()},
        "input_data": {"sources": [{"name": s.name, "path": s.path, "sha256": tree_sha256(s.path),
                                    "files": len(file_digests(s.path)), **{k: extract.get("sources", {}).get(s.name, {}).get(k)
                                    for k in ("records_written", "quarantined", "patients")}} for s in sources],
                       "records_written": extract.get("records_written"), "quarantined": extract.get("quarantined"),
                       "patients": extract.get("patients")},
        "splits": {"manifest_sha256": sha256_file(split_manifest) if split_manifest else None,
                   "counts": {n: {k: s.get(k) for k in ("records", "patients", "positive_ratio", "content_sha256")}
                              for n, s in split_info.get("splits", {}).items()}},
        "tasks": tasks, "metrics": metrics, "baselines": baselines, "ensembles": ensembles,
        "out_of_fold": out_of_fold, "pushed": sorted(pushed, key=lambda p: p.get("model", "")),
    }
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def verify(run_dir: str | Path) -> tuple[dict, list[str]]:
    """Re-hash every recorded file; returns the manifest and the problems found (none: it holds)."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.exists():
        raise cli.UserError(f"{path} not found: give a run folder written by 'python -m pipelines run' "
                            "(a run that failed has no manifest; its run.log says why)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return {}, [f"{path} is not valid JSON ({e})"]
    problems = []
    spec = run_dir / manifest["pipeline"]["spec"]
    if not spec.exists() or sha256_file(spec) != manifest["pipeline"]["spec_sha256"]:
        problems.append(f"{spec.name}: the compiled pipeline changed or is missing")
    for task in manifest["tasks"].values():
        for output in task["outputs"].values():
            root = run_dir / output["path"]
            now = file_digests(root) if root.exists() else {}
            for rel, digest in output["files"].items():
                shown = output["path"] if rel == "." else f"{output['path']}/{rel}"
                if rel not in now:
                    problems.append(f"{shown}: missing")
                elif now[rel] != digest:
                    problems.append(f"{shown}: sha256 differs from the manifest (modified)")
            problems += [f"{output['path']}/{rel}: not in the manifest (added)" for rel in now if rel not in output["files"]]
    problems += pushed_version_problems(manifest["pushed"])
    return manifest, problems


def pushed_version_problems(pushed: list[dict]) -> list[str]:
    """Re-hash every model version this run pushed (or found identical) in the repository: a
    changed byte, a replaced file or a deleted folder there is named, not trusted to the digest
    file the push wrote beside it."""
    from serving import repository

    problems = []
    for push in pushed:
        if not push.get("version"):
            continue
        version_dir = Path(push["model_repo"]) / push["model"] / str(push["version"])
        if not (version_dir / "saved_model.pb").exists():
            problems.append(f"{version_dir}: missing from the model repository (this run pushed it)")
        elif repository.export_digest(version_dir) != push["export_sha256"]:
            problems.append(f"{version_dir}: its files differ from the export this run pushed (modified)")
    return problems


def report(manifest: dict, problems: list[str]) -> str:
    lines = [f"run {manifest.get('run_id')}: pipeline {manifest['pipeline']['name']} "
             f"(spec sha256 {manifest['pipeline']['spec_sha256'][:16]}), code {manifest['code']['version']}",
             f"  {manifest['started_utc']} -> {manifest['finished_utc']}"]
    d = manifest["input_data"]
    for s in d["sources"]:
        lines.append(f"  source {s['name']} {s['path']}: {s['files']} files, sha256 {s['sha256'][:16]}, "
                     f"{s['records_written']} records written, {s['quarantined']} quarantined, {s['patients']} patients")
    lines.append(f"  all sources: {d['records_written']} records written, {d['quarantined']} quarantined, "
                 f"{d['patients']} patients")
    for name, s in sorted(manifest["splits"]["counts"].items(), key=lambda kv: SPLITS.index(kv[0])):
        lines.append(f"  {name:<10} {s['records']:>5} records {s['patients']:>4} patients  positive share "
                     f"{s['positive_ratio']}  sha256 {str(s['content_sha256'])[:16]}")
    lines.append(f"  {'model':<38} {'AUC [95% CI]':<22} {'F1 [95% CI]':<22} blessed")
    evaluated = {**manifest["metrics"], **manifest.get("ensembles", {}), **manifest.get("out_of_fold", {})}
    for name, m in sorted(evaluated.items()):
        auc, f1 = m["metrics"]["roc_auc"], m["metrics"]["f1"]
        blessed = {True: "yes", False: "no"}.get(m.get("blessed"), "n/a")
        lines.append(f"  {name:<38} {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]   "
                     f"{f1['value']:.3f} [{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]   {blessed}")
    for p in manifest["pushed"]:
        where = f"version {p['version']}" if p.get("version") else "not pushed"
        lines.append(f"  push {p['model']}: {where} ({p['reason']})")
    files = sum(len(o["files"]) for t in manifest["tasks"].values() for o in t["outputs"].values())
    if problems:
        lines.append(f"AUDIT FAILED: {len(problems)} problem(s) among {files} recorded files:")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append(f"audit passed: {files} artifact files in {len(manifest['tasks'])} tasks match the manifest")
    return "\n".join(lines)
