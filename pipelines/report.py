"""The cross-modality comparison, generated from the runs under a work dir: the original report's
tables 5.1-5.10, done as a reviewer expects (CLAIM 2024, TRIPOD+AI).

Per modality (the study's runs from ``study.json``, else each modality's newest run): the models
of each strategy beside two baselines (majority class; logistic regression on intensity/colour
histograms) with every metric's 95 % patient-level cluster-bootstrap interval (tables 5.1/5.2,
5.4/5.5, 5.7/5.8); the change from unfrozen to progressive per backbone and the backbones
within a strategy, each an AUC difference with a paired cluster-bootstrap interval and p-value,
Holm-corrected over all comparisons of the modality (5.3, 5.6, 5.9); temperature scaling (fitted
on validation) with ECE before and after (10 equal-width bins); the seed replicates of the best
configuration (mean and SD); per-patient results where a modality has few patients; and the best
configuration per modality against its target (5.10). "Best" is chosen on **validation** AUC,
so the test figures of the best model are not selected on test. A forest plot shows every model's
test AUC with its interval.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from components import catalog, compare, stats
from components.artifacts import MANIFEST, METRICS, TRAINING, read_json
from components.atomic import write_text
from pipelines.steps import markdown_table

COLUMNS = ("roc_auc", "pr_auc", "balanced_accuracy", "recall", "specificity", "f1", "brier")
HEADINGS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "balanced_accuracy": "balanced acc.",
            "recall": "sensitivity", "specificity": "specificity", "f1": "F1", "brier": "Brier",
            "accuracy": "accuracy", "precision": "precision",
            "sensitivity_at_specificity_0.80": "sensitivity at specificity 0.80"}
# Each modality's accuracy target on its patient-wise test split (the study's issue): metric -> minimum
TARGETS = {"histopathology": {"balanced_accuracy": 0.84, "f1": 0.72},
           "ultrasound": {"roc_auc": 0.85, "sensitivity_at_specificity_0.80": 0.80},
           "mammography": {"roc_auc": 0.85}}
FOREST = "forest_plot.png"
FEW_PATIENTS = 10          # below this many test patients, intervals are flagged and per-patient rows shown
STUDY = "study.json"


def latest_runs(work_dir: Path) -> dict[str, dict]:
    """modality -> {"run": main run folder, "replicates": [run folders]}: the study's runs when
    ``study.json`` names them, else the newest run with a manifest per modality."""
    study = work_dir / STUDY
    if study.exists():
        record = json.loads(study.read_text())
        return {m: {"run": work_dir / r["run"], "replicates": [work_dir / x for x in r["replicates"]],
                    "profile": record["profile"]}
                for m, r in record["modalities"].items()}
    runs = {}
    for path in sorted(work_dir.glob(f"*/{MANIFEST}")):
        runs[json.loads(path.read_text())["pipeline"]["modality"]] = {"run": path.parent, "replicates": []}
    return runs


def evaluations(run_dir: Path) -> dict[str, Path]:
    """model name -> its evaluation folder in the run (baselines too: ``<modality>-baseline-<name>``)."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    found = {}
    for task in manifest["tasks"].values():
        output = task["outputs"].get("evaluation")
        if not output:
            continue
        folder = run_dir / output["path"]
        for metrics in [folder / METRICS, *sorted(folder.glob(f"*/{METRICS}"))]:
            if metrics.exists():
                found[json.loads(metrics.read_text())["model_name"]] = metrics.parent
    return found


def _ci(m: dict, digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def _load(evals: dict[str, Path]) -> dict[str, dict]:
    return {name: read_json(path, METRICS) for name, path in evals.items()}


def _row(label: str, m: dict) -> list[str]:
    t = m.get("temperature", {})
    return [label] + [_ci(m["metrics"][c]) for c in COLUMNS] + [
        f"{m['threshold']:.3f}", f"{t.get('value', 1):.2f}",
        f"{t.get('ece_before', float('nan')):.3f} -> {t.get('ece_after', float('nan')):.3f}"]


def comparisons(modality: str, evals: dict[str, Path]) -> list[dict]:
    """Paired cluster-bootstrap AUC differences: progressive vs unfrozen per backbone, and the
    backbones within each strategy; p-values Holm-corrected over all of them."""
    models = {n: p for n, p in evals.items() if "-baseline-" not in n}
    if len(models) < 2:
        return []
    names = sorted(models)
    loaded = dict(compare.load_predictions(models[n]) for n in names)
    ids = sorted(loaded[names[0]])
    y = np.array([loaded[names[0]][i][0] for i in ids])
    groups = compare.groups_of(models[names[0]], ids)
    pairs = [(catalog.model_name(modality, b, "unfrozen"), catalog.model_name(modality, b, "progressive"))
             for b in catalog.BACKBONES]
    for strategy in catalog.STRATEGIES:
        backbones = [catalog.model_name(modality, b, strategy) for b in catalog.BACKBONES]
        pairs += [(a, b) for i, a in enumerate(backbones) for b in backbones[i + 1:]]
    pairs = [(a, b) for a, b in pairs if a in loaded and b in loaded]
    scores = {n: np.array([loaded[n][i][1] for i in ids]) for n in {x for pair in pairs for x in pair}}
    every = {(r["model_1"], r["model_2"]): r for r in stats.paired_auc_bootstrap(y, scores, groups)}
    rows = [every.get((a, b)) or _swap(every[(b, a)]) for a, b in pairs]
    for r, adjusted in zip(rows, stats.holm([r["p_value"] for r in rows])):
        r["p_holm"] = adjusted
    return rows


def _swap(r: dict) -> dict:
    return {**r, "model_1": r["model_2"], "model_2": r["model_1"], "auc_1": r["auc_2"], "auc_2": r["auc_1"],
            "difference": -r["difference"], "ci_low": -r["ci_high"], "ci_high": -r["ci_low"]}


def validation_aucs(run_dir: Path) -> dict[str, float]:
    """model name -> best validation AUC, from the training records of the run's train tasks."""
    return {t["model_name"]: t["best_val_auc"]
            for t in (json.loads(p.read_text()) for p in sorted(run_dir.rglob(f"model/{TRAINING}")))}


def best_on_validation(run_dir: Path) -> str | None:
    """The run's model with the highest validation AUC (never chosen on test), or None."""
    aucs = validation_aucs(run_dir)
    return max(aucs, key=aucs.get) if aucs else None


def modality_tables(modality: str, runs: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    run_dir = runs["run"]
    evals = evaluations(run_dir)
    metrics = _load(evals)
    baselines = {n: m for n, m in metrics.items() if "-baseline-" in n}
    header = ["model", *(HEADINGS[c] for c in COLUMNS), "threshold", "T", "ECE before -> after"]
    # every model of a run is tested on the same split, so one patient count serves every table;
    # below FEW_PATIENTS intervals are flagged, and a paired cluster bootstrap has a handful of
    # distinct resamples (3 for 2 patients), so its p-value reads 0 for any difference: none is given
    clusters = max((m.get("clusters", 0) for m in metrics.values()), default=0)
    few = 0 < clusters < FEW_PATIENTS
    tables = []
    for strategy in catalog.STRATEGIES:
        rows = [_row(b, metrics[catalog.model_name(modality, b, strategy)]) for b in catalog.BACKBONES
                if catalog.model_name(modality, b, strategy) in metrics]
        if rows:
            rows += [_row(f"baseline: {n.rsplit('-', 1)[1]}", m) for n, m in sorted(baselines.items())]
            any_m = metrics[catalog.model_name(modality, catalog.BACKBONES[0], strategy)] \
                if catalog.model_name(modality, catalog.BACKBONES[0], strategy) in metrics else next(iter(metrics.values()))
            flag = (f"; with only {clusters} patients a patient-level interval shows what resampling these "
                    f"{clusters} gives, not the spread over new patients: read the per-patient table" if few else "")
            tables.append((f"{modality}: {strategy} models and baselines (test split, n = {any_m['records']} records "
                           f"from {clusters or '?'} patients/groups; 95% cluster-bootstrap CIs{flag})", header, rows))
    rows = [[f"{r['model_1'].split('-', 1)[1]} vs {r['model_2'].split('-', 1)[1]}", f"{r['auc_1']:.3f} vs {r['auc_2']:.3f}",
             f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
             *(("n/a", "n/a") if few else (f"{r['p_value']:.3g}", f"{r['p_holm']:.3g}"))]
            for r in comparisons(modality, evals)]
    if rows:
        tables.append((f"{modality}: paired comparisons (AUC difference, paired cluster bootstrap; p Holm-corrected "
                       "over the modality's 9 comparisons"
                       + (f"; with only {clusters} test patients no p-value is given: the bootstrap draws too few "
                          "distinct resamples to test anything" if few else "") + ")",
                       ["pair", "AUC", "difference [95% CI]", "p", "p (Holm)"], rows))
    best = best_on_validation(run_dir)
    if best and runs.get("replicates"):
        seeds = [(0, metrics[best])] + [(i + 1, _load(evaluations(r)).get(best)) for i, r in enumerate(runs["replicates"])]
        seeds = [(s, m) for s, m in seeds if m]
        rows = [[f"seed {s}", *(f"{m['metrics'][c]['value']:.3f}" for c in ("roc_auc", "balanced_accuracy", "f1"))]
                for s, m in seeds]
        for label, fn in (("mean", np.mean), ("SD", lambda v: np.std(v, ddof=1) if len(v) > 1 else float("nan"))):
            rows.append([label, *(f"{fn([m['metrics'][c]['value'] for _, m in seeds]):.3f}"
                                  for c in ("roc_auc", "balanced_accuracy", "f1"))])
        tables.append((f"{modality}: best configuration on validation ({best}) re-trained with {len(seeds)} seeds, "
                       "same split", ["seed", "ROC-AUC", "balanced acc.", "F1"], rows))
    if best and metrics[best].get("clusters", 99) < 2 * FEW_PATIENTS:
        rows = [[r["patient_id"], r["records"], r["positives"], f"{r['mean_probability']:.3f}", f"{r['accuracy']:.3f}"]
                for r in metrics[best]["per_patient"]]
        tables.append((f"{modality}: per-patient results of {best} (test split)",
                       ["patient", "records", "positives", "mean probability", "accuracy"], rows))
    return tables


def best_table(runs: dict[str, dict]) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    for modality, r in runs.items():
        best = best_on_validation(r["run"])
        metrics = _load(evaluations(r["run"]))
        if not best or best not in metrics:
            continue
        m = metrics[best]
        targets = []
        for key, minimum in TARGETS.get(modality, {}).items():
            value = m.get(key) if key in m else m["metrics"][key]
            point = value if isinstance(value, float) else value["value"]
            verdict = f"{HEADINGS.get(key, key)} {point:.3f} {'meets' if point >= minimum else 'misses'} {minimum}"
            if not isinstance(value, float):
                low = value["ci_low"]
                verdict += f" (lower bound {low:.3f}{'' if low >= minimum else ' does not'})"
            targets.append(verdict)
        histogram = metrics.get(f"{modality}-baseline-histogram")
        rows.append([modality, best, _ci(m["metrics"]["roc_auc"]), _ci(m["metrics"]["balanced_accuracy"]),
                     _ci(m["metrics"]["f1"]), f"{m.get('sensitivity_at_specificity_0.80', float('nan')):.3f}",
                     _ci(histogram["metrics"]["roc_auc"]) if histogram else "", "; ".join(targets)])
    return ("Best configuration per modality (chosen on validation AUC; test figures with 95% cluster-bootstrap CIs)",
            ["modality", "model", "ROC-AUC", "balanced acc.", "F1", "sensitivity at specificity 0.80",
             "histogram baseline ROC-AUC", "target"], rows)


def forest_plot(runs: dict[str, dict], path: Path) -> None:
    """Every model's and baseline's test AUC with its 95 % interval, one panel per modality."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, _load(evaluations(r["run"]))) for m, r in runs.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (modality, metrics) in zip(axes[0], panels):
        names = sorted(metrics, key=lambda n: ("-baseline-" in n, n))
        for i, name in enumerate(names):
            auc = metrics[name]["metrics"]["roc_auc"]
            colour = "tab:gray" if "-baseline-" in name else "tab:blue"
            ax.plot([auc["ci_low"], auc["ci_high"]], [i, i], color=colour, lw=2)
            ax.plot(auc["value"], i, "o", color=colour)
        ax.set_yticks(range(len(names)), [n.split("-", 1)[1] for n in names], fontsize=8)
        ax.axvline(0.5, color="k", ls="--", lw=0.8)
        if "roc_auc" in TARGETS.get(modality, {}):
            ax.axvline(TARGETS[modality]["roc_auc"], color="tab:green", ls=":", lw=1, label="target")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlim(0.3, 1.0)
        ax.invert_yaxis()
        ax.set_title(modality, fontsize=10)
        ax.set_xlabel("test ROC-AUC, 95% cluster-bootstrap CI", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(title: str, tables, intro: str) -> str:
    out = [f"# {title}\n", intro + "\n", __doc__.split("\n\n", 1)[1].strip() + "\n", f"![forest plot]({FOREST})\n"]
    for caption, header, rows in tables:
        out += [f"\n## {caption}\n", markdown_table(rows, header)]
    return "\n".join(out)


def to_html(title: str, tables, intro: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style></head><body>",
             f"<h1>{e(title)}</h1><p>{e(intro)}</p><p>{e(' '.join(__doc__.split(chr(10) * 2, 1)[1].split()))}</p>",
             f"<img src='{FOREST}' alt='forest plot of every model's test AUC with its 95% CI'>"]
    for caption, header, rows in tables:
        parts.append(f"<h2>{e(caption)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    return "".join(parts) + "</body></html>\n"


README_BEGIN, README_END = "<!-- study-table:begin (generated by pipelines report --readme) -->", "<!-- study-table:end -->"


def update_readme(readme: Path, intro: str, table: tuple) -> None:
    """Replace the block between the README's study markers with the headline table."""
    from components import cli

    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise cli.UserError(f"{readme} has no study block: add the lines {README_BEGIN!r} and {README_END!r}")
    caption, header, rows = table
    block = f"{README_BEGIN}\n{intro}\n\n**{caption}**\n\n{markdown_table(rows, header)}{README_END}"
    head, rest = text.split(README_BEGIN, 1)
    write_text(readme, head + block + rest.split(README_END, 1)[1])


def run(work_dir: str | Path, out: str | Path | None = None, readme: str | Path | None = None) -> list[Path]:
    import datetime

    from components import cli

    work_dir = Path(work_dir)
    runs = latest_runs(work_dir)
    if not runs:
        raise cli.UserError(f"no finished run under {work_dir} (no */{MANIFEST}); run 'python -m pipelines run' first")
    tables = [t for modality in catalog.MODALITIES if modality in runs for t in modality_tables(modality, runs[modality])]
    headline = best_table(runs)
    tables.append(headline)
    out = Path(out or work_dir)
    out.mkdir(parents=True, exist_ok=True)
    forest_plot(runs, out / FOREST)
    profiles = sorted({r.get("profile", "") for r in runs.values()} - {""})
    intro = (f"Generated {datetime.date.today().isoformat()} from "
             f"{', '.join(r['run'].name for r in runs.values())}"
             + (f"; profile {', '.join(profiles)}" if profiles else "") + ".")
    title = "Breast-cancer imaging: models compared across modalities"
    write_text(out / "report.md", markdown(title, tables, intro))
    write_text(out / "report.html", to_html(title, tables, intro))
    if readme:
        update_readme(Path(readme), intro, headline)
    return [out / "report.md", out / "report.html", out / FOREST]
