"""The cross-modality comparison, generated from the runs under a work dir: the original report's
tables 5.1-5.10, done as a reviewer expects (CLAIM 2024, TRIPOD+AI).

Per modality (the study's runs from ``study.json``, else each modality's newest run): the models
of each strategy beside the cohort ensemble (the mean of the three calibrated probabilities,
its threshold chosen on validation) and the baselines (majority class; logistic regression on
intensity/colour histograms; with several sources, each source's prevalence) with every metric's
95 % patient-level cluster-bootstrap interval (tables 5.1/5.2, 5.4/5.5, 5.7/5.8); with several
sources every model per source, with its sensitivity and specificity at the validation threshold
and its calibration, and the shortcut check (can the source be told from the image, and does it
explain the score); the change from unfrozen to progressive per backbone, the backbones within a
strategy and each ensemble against its cohort's best backbone, each an AUC difference with a
paired cluster-bootstrap interval and p-value, Holm-corrected over all comparisons of the
modality (5.3, 5.6, 5.9); temperature scaling (fitted on validation) with ECE before and after
(10 equal-width bins); the seed replicates of the best configuration (mean and SD); its
patient-level cross-validation where the test split holds few patients (out-of-fold, every
patient once, per fold and per patient); and the best configuration per modality against its
targets (5.10). "Best" is chosen on **validation** AUC, so the test figures of the best model
are not selected on test. A forest plot shows every model's test AUC with its interval, per
source where there are several.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from components.core import catalog
from components.core.artifacts import MANIFEST, METRICS, SHORTCUT, TRAINING, read_json
from components.core.atomic import write_text
from pipelines.study import tables
from pipelines.steps import markdown_table
from pipelines.study.tables import FEW_PATIENTS, TARGETS  # noqa: F401  (the report's vocabulary, for callers)

FOREST = "forest_plot.png"
STUDY = "study.json"


def _pipeline(path: Path) -> tuple[str, str]:
    manifest = json.loads(path.read_text())["pipeline"]
    return manifest["modality"], manifest["name"]


def latest_runs(work_dir: Path) -> dict[str, dict]:
    """modality -> {"run": main run folder, "replicates": [run folders], "cv": run folder or None}:
    the study's runs when ``study.json`` names them, else the newest finished run of each
    modality's pipeline (and of its cross-validation pipeline)."""
    study = work_dir / STUDY
    if study.exists():
        record = json.loads(study.read_text())
        return {m: {"run": work_dir / r["run"], "replicates": [work_dir / x for x in r["replicates"]],
                    "cv": work_dir / r["cross_validation"] if r.get("cross_validation") else None,
                    "profile": record["profile"]}
                for m, r in record["modalities"].items()}
    runs, cv = {}, {}
    for path in sorted(work_dir.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime):
        modality, name = _pipeline(path)
        (cv if name.endswith("-cv") else runs)[modality] = path.parent
    return {m: {"run": r, "replicates": [], "cv": cv.get(m)} for m, r in runs.items()}


def evaluations(run_dir: Path) -> dict[str, Path]:
    """model name -> its evaluation folder in the run (baselines too: ``<modality>-baseline-<name>``,
    and the cohort ensembles, ``<modality>-ensemble-<strategy>``)."""
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


def _load(evals: dict[str, Path]) -> dict[str, dict]:
    return {name: read_json(path, METRICS) for name, path in evals.items()}


def validation_aucs(run_dir: Path) -> dict[str, float]:
    """model name -> best validation AUC, from the training records of the run's train tasks."""
    return {t["model_name"]: t["best_val_auc"]
            for t in (json.loads(p.read_text()) for p in sorted(run_dir.rglob(f"model/{TRAINING}")))}


def best_on_validation(run_dir: Path) -> str | None:
    """The run's model with the highest validation AUC (never chosen on test), or None."""
    aucs = validation_aucs(run_dir)
    return max(aucs, key=aucs.get) if aucs else None


def test_patients(run_dir: Path) -> int:
    """Patients (near-duplicate groups count once) in the run's test split."""
    metrics = [m for n, m in _load(evaluations(run_dir)).items() if "-baseline-" not in n]
    return max((m.get("clusters", 0) for m in metrics), default=0)


def load(modality: str, runs: dict) -> tables.Loaded:
    run_dir = runs["run"]
    folders = evaluations(run_dir)
    shortcut = next((json.loads((p.parent / SHORTCUT).read_text()) for p in folders.values()
                     if (p.parent / SHORTCUT).exists()), None)
    out_of_fold = None
    if runs.get("cv"):
        pooled = [m for m in _load(evaluations(runs["cv"])).values() if "folds" in m]
        out_of_fold = pooled[0] if pooled else None
    return tables.Loaded(modality, run_dir, _load(folders), folders, validation_aucs(run_dir),
                         replicates=[_load(evaluations(r)) for r in runs.get("replicates", [])],
                         out_of_fold=out_of_fold, shortcut=shortcut)


def forest_plot(loaded: dict[str, tables.Loaded], path: Path) -> None:
    """Every model's, ensemble's and baseline's test AUC with its 95 % interval, one panel per
    modality; with several sources each source's AUC beside the pooled one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(loaded), figsize=(5.2 * len(loaded), 4.6), squeeze=False)
    for ax, (modality, d) in zip(axes[0], loaded.items()):
        names = sorted(d.metrics, key=lambda n: ({"model": 0, "ensemble": 1, "baseline": 2}[tables._kind(n)], n))
        series = [("pooled", None, "o")] + [(s, s, m) for s, m in zip(d.sources, "s^vD")] if len(d.sources) > 1 \
            else [("test", None, "o")]
        for k, (label, source, marker) in enumerate(series):
            offset = (k - (len(series) - 1) / 2) * 0.22
            for i, name in enumerate(names):
                m = d.metrics[name] if source is None else d.metrics[name].get("sources", {}).get(source)
                if not m:
                    continue
                auc = m["metrics"]["roc_auc"]
                colour = {"model": "tab:blue", "ensemble": "tab:purple", "baseline": "tab:gray"}[tables._kind(name)]
                ax.plot([auc["ci_low"], auc["ci_high"]], [i + offset] * 2, color=colour, lw=1.5,
                        alpha=1.0 if source is None else 0.6)
                ax.plot(auc["value"], i + offset, marker, color=colour, ms=4,
                        label=label if i == 0 and len(series) > 1 else None)
        ax.set_yticks(range(len(names)), [tables.short(n) for n in names], fontsize=7)
        ax.axvline(0.5, color="k", ls="--", lw=0.8)
        for metric, minimum, _ in TARGETS.get(modality, ()):
            if metric == "roc_auc":
                ax.axvline(minimum, color="tab:green", ls=":", lw=1)
        if len(series) > 1:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlim(0.3, 1.0)
        ax.invert_yaxis()
        ax.set_title(modality, fontsize=10)
        ax.set_xlabel("test ROC-AUC, 95% cluster-bootstrap CI (green: target)", fontsize=8)
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


BLOCK_BEGIN, BLOCK_END = "<!-- study-table:begin (generated by pipelines report --results-page) -->", "<!-- study-table:end -->"


def update_results_page(page: Path, intro: str, table: tuple) -> None:
    """Replace the block between the results page's study markers with the headline table."""
    from components.core import cli

    text = page.read_text()
    if BLOCK_BEGIN not in text or BLOCK_END not in text:
        raise cli.UserError(f"{page} has no study block: add the lines {BLOCK_BEGIN!r} and {BLOCK_END!r}")
    caption, header, rows = table
    block = f"{BLOCK_BEGIN}\n{intro}\n\n**{caption}**\n\n{markdown_table(rows, header)}{BLOCK_END}"
    head, rest = text.split(BLOCK_BEGIN, 1)
    write_text(page, head + block + rest.split(BLOCK_END, 1)[1])


def run(work_dir: str | Path, out: str | Path | None = None, results_page: str | Path | None = None) -> list[Path]:
    import datetime

    from components.core import cli

    work_dir = Path(work_dir)
    runs = latest_runs(work_dir)
    if not runs:
        raise cli.UserError(f"no finished run under {work_dir} (no */{MANIFEST}); run 'python -m pipelines run' first")
    loaded = {m: load(m, runs[m]) for m in catalog.MODALITIES if m in runs}
    every = [t for d in loaded.values() for t in tables.modality_tables(d)]
    headline = tables.best_table(loaded)
    every.append(headline)
    out = Path(out or work_dir)
    out.mkdir(parents=True, exist_ok=True)
    forest_plot(loaded, out / FOREST)
    profiles = sorted({r.get("profile", "") for r in runs.values()} - {""})
    intro = (f"Generated {datetime.date.today().isoformat()} from "
             f"{', '.join(r['run'].name for r in runs.values())}"
             + (f"; profile {', '.join(profiles)}" if profiles else "") + ".")
    title = "Breast-cancer imaging: models compared across modalities"
    write_text(out / "report.md", markdown(title, every, intro))
    write_text(out / "report.html", to_html(title, every, intro))
    if results_page:
        update_results_page(Path(results_page), intro, headline)
    return [out / "report.md", out / "report.html", out / FOREST]
