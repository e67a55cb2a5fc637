"""The cross-modality comparison, generated from the runs under a work dir: the original report's
tables 5.1-5.10, with what that report lacked.

Per modality (its newest run with a manifest): the models of each strategy with every metric's
95 % bootstrap interval (tables 5.1/5.2, 5.4/5.5, 5.7/5.8), the change from the unfrozen to the
progressive strategy per backbone with DeLong's paired test of the AUC difference (5.3, 5.6,
5.9), DeLong tests between backbones within a strategy, and the best configuration per
modality (5.10). "Best" is the highest test AUC, so it is descriptive: choosing on the test set
is itself a selection the p-values do not correct for.
"""
from __future__ import annotations

import html
import itertools
import json
from pathlib import Path

from components import catalog, compare
from components.atomic import write_text
from pipelines.audit import MANIFEST

COLUMNS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def latest_runs(work_dir: Path) -> dict[str, Path]:
    """The newest run folder with a manifest, per modality (run ids sort by time)."""
    runs = {}
    for path in sorted(work_dir.glob(f"*/{MANIFEST}")):
        runs[json.loads(path.read_text())["pipeline"]["modality"]] = path.parent
    return runs


def evaluations(run_dir: Path) -> dict[str, Path]:
    """model name -> its evaluation folder in the run."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    found = {}
    for task in manifest["tasks"].values():
        output = task["outputs"].get("evaluation")
        if output:
            folder = run_dir / output["path"]
            found[json.loads((folder / "metrics.json").read_text())["model_name"]] = folder
    return found


def _ci(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _delong(a: Path, b: Path) -> dict:
    (result,) = compare.run([a, b])
    return result


def modality_tables(modality: str, run_dir: Path) -> list[tuple[str, list[str], list[list[str]]]]:
    evals = evaluations(run_dir)
    metrics = {name: json.loads((path / "metrics.json").read_text()) for name, path in evals.items()}
    tables = []
    for strategy in catalog.STRATEGIES:
        rows = []
        for backbone in catalog.BACKBONES:
            name = catalog.model_name(modality, backbone, strategy)
            if name in metrics:
                m = metrics[name]
                blessed = json.loads((evals[name] / "blessing.json").read_text())["blessed"]
                rows.append([backbone] + [_ci(m["metrics"][c]) for c in COLUMNS]
                            + [f"{m['threshold']:.3f}", "yes" if blessed else "no"])
        if rows:
            n = metrics[next(k for k in metrics if k.endswith(strategy))]["records"]
            tables.append((f"{modality}: {strategy} models (test split, n = {n}; 95% bootstrap CIs)",
                           ["backbone", *COLUMNS, "threshold (from validation)", "blessed"], rows))
    rows = []
    for backbone in catalog.BACKBONES:
        u, p = (catalog.model_name(modality, backbone, s) for s in ("unfrozen", "progressive"))
        if u in metrics and p in metrics:
            d = _delong(evals[u], evals[p])
            rows.append([backbone] + [f"{100 * (metrics[p]['metrics'][c]['value'] - metrics[u]['metrics'][c]['value']):+.1f}"
                                      for c in COLUMNS] + [f"{d['p_value']:.3g}"])
    if rows:
        tables.append((f"{modality}: progressive minus unfrozen (percentage points; DeLong p for the AUC difference)",
                       ["backbone", *COLUMNS, "DeLong p (AUC)"], rows))
    rows = []
    for strategy in catalog.STRATEGIES:
        for a, b in itertools.combinations(catalog.BACKBONES, 2):
            na, nb = (catalog.model_name(modality, x, strategy) for x in (a, b))
            if na in evals and nb in evals:
                d = _delong(evals[na], evals[nb])
                rows.append([strategy, f"{a} vs {b}", f"{d['auc_1']:.3f} vs {d['auc_2']:.3f}",
                             f"{d['difference']:+.3f} (SE {d['se']:.3f})", f"{d['p_value']:.3g}"])
    if rows:
        tables.append((f"{modality}: backbones compared within a strategy (DeLong, paired on the test split)",
                       ["strategy", "pair", "AUC", "difference", "p"], rows))
    return tables


def best_table(runs: dict[str, Path]) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    for modality, run_dir in runs.items():
        metrics = {n: json.loads((p / "metrics.json").read_text()) for n, p in evaluations(run_dir).items()}
        if metrics:
            name, m = max(metrics.items(), key=lambda kv: kv[1]["metrics"]["roc_auc"]["value"])
            rows.append([modality, name, _ci(m["metrics"]["roc_auc"]), _ci(m["metrics"]["f1"]),
                         _ci(m["metrics"]["recall"]), _ci(m["metrics"]["specificity"]), run_dir.name])
    return ("Best configuration per modality (highest test AUC; descriptive, see the note above)",
            ["modality", "model", "AUC", "F1", "sensitivity", "specificity", "run"], rows)


def markdown(title: str, tables) -> str:
    out = [f"# {title}\n", __doc__.split("\n\n", 1)[1].strip() + "\n"]
    for caption, header, rows in tables:
        out += [f"\n## {caption}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def to_html(title: str, tables) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
             f"<h1>{e(title)}</h1><p>{e(' '.join(__doc__.split(chr(10) * 2, 1)[1].split()))}</p>"]
    for caption, header, rows in tables:
        parts.append(f"<h2>{e(caption)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    return "".join(parts) + "</body></html>\n"


def run(work_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    from components import cli

    work_dir = Path(work_dir)
    runs = latest_runs(work_dir)
    if not runs:
        raise cli.UserError(f"no finished run under {work_dir} (no */{MANIFEST}); run 'python -m pipelines run' first")
    tables = [t for modality in catalog.MODALITIES if modality in runs for t in modality_tables(modality, runs[modality])]
    tables.append(best_table(runs))
    out = Path(out or work_dir)
    title = "Breast-cancer imaging: models compared across modalities"
    write_text(out / "report.md", markdown(title, tables))
    write_text(out / "report.html", to_html(title, tables))
    return [out / "report.md", out / "report.html"]

