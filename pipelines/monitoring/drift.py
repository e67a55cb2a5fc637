"""Drift: do the images a gateway serves still look like the ones the model was trained on?

    python -m pipelines drift --model-repo R --work-dir W --gateway URL [--threshold 0.2 --min-count 30]

The gateway keeps, per model and version, Prometheus histograms of each served image's cheap
statistics (size, channels, mean and spread of its intensity: ``components.imaging.inputstats``) and of
the probability it answered; no image and nothing identifying. The model card holds the same
histograms of the training split (and of the calibrated validation probabilities). This command
reads the gateway's ``/metrics``, compares the two distributions of every feature with the
population stability index (PSI = sum (s - r) ln(s / r) over the buckets, the shares smoothed by
half a count) and the Jensen-Shannon distance, and names the features whose PSI is above the
threshold (0.2: a shift worth acting on, by the usual reading; 0.1-0.2 moderate). It writes
``W/drift-<time>/report.md`` and ``report.html`` with both distributions of every feature drawn.
The counts are those since the gateway started: the window is its lifetime (a restart opens a
new one).
"""
from __future__ import annotations

import datetime
import html
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from components.core import cli
from components.imaging import inputstats
from components.core.atomic import write_text

FEATURES = (*inputstats.FEATURES, "probability")
METRIC = {**{f: f"gateway_input_{f}" for f in inputstats.FEATURES}, "probability": "gateway_prediction_probability"}
DEFAULT_THRESHOLD = 0.2


def served_histograms(metrics_text: str) -> dict[tuple[str, str], dict[str, list[int]]]:
    """(model, version) -> feature -> per-bucket counts (the last one above the top edge), from a
    Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {name: f for f, name in METRIC.items()}
    cumulative: dict[tuple, dict[str, dict[float, float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        feature = wanted.get(family.name)
        if feature is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["model"], sample.labels["version"])
                cumulative.setdefault(key, {}).setdefault(feature, {})[float(sample.labels["le"])] = sample.value
    out = {}
    for key, features in cumulative.items():
        out[key] = {}
        for feature, by_edge in features.items():
            running = np.array([by_edge[e] for e in sorted(by_edge)])       # cumulative, +Inf last
            out[key][feature] = np.diff(running, prepend=0).astype(int).tolist()
    return out


def psi(reference: list[int], served: list[int]) -> float:
    r, s = np.asarray(reference, float) + 0.5, np.asarray(served, float) + 0.5
    r, s = r / r.sum(), s / s.sum()
    return float(np.sum((s - r) * np.log(s / r)))


def js_distance(reference: list[int], served: list[int]) -> float:
    from scipy.spatial.distance import jensenshannon

    r, s = np.asarray(reference, float), np.asarray(served, float)
    if not r.sum() or not s.sum():
        return float("nan")
    return float(jensenshannon(r / r.sum(), s / s.sum(), base=2))


def compare(card: dict, served: dict[str, list[int]], threshold: float) -> list[dict]:
    """One row per feature: PSI, JS distance, counts, whether it is beyond the threshold."""
    reference = card.get("drift_reference") or {}
    rows = []
    for feature in FEATURES:
        ref = reference.get("probability") if feature == "probability" else reference.get("inputs", {}).get(feature)
        if not ref or feature not in served:
            continue
        if len(ref["counts"]) != len(served[feature]):
            raise cli.UserError(f"{card['model_name']}: the gateway's {feature} buckets differ from the card's; "
                                "gateway and model card come from different versions of the product")
        value = psi(ref["counts"], served[feature])
        rows.append({"feature": feature, "psi": value, "js": js_distance(ref["counts"], served[feature]),
                     "served": int(sum(served[feature])), "reference": int(sum(ref["counts"])),
                     "drift": value > threshold, "buckets": ref["buckets"], "reference_counts": ref["counts"],
                     "served_counts": served[feature]})
    return rows


def picture(row: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e:.3g}" for e in row["buckets"]] + ["more"]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    for counts, name, offset in ((row["reference_counts"], "training", -0.2), (row["served_counts"], "served", 0.2)):
        share = np.asarray(counts, float) / max(1, sum(counts))
        ax.bar(x + offset, share, width=0.4, label=f"{name} (n={sum(counts)})")
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.set_ylabel("share")
    ax.set_title(f"{title}: {row['feature']} (PSI {row['psi']:.2f})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(model_repo: str | Path, work_dir: str | Path, gateway: str, threshold: float = DEFAULT_THRESHOLD,
        min_count: int = 30, metrics_text: str | None = None, token: str | None = None) -> dict:
    """``token``: a bearer token with the operator role (the gateway's /metrics needs one)."""
    from serving import layout

    model_repo, work_dir = Path(model_repo), Path(work_dir)
    if metrics_text is None:
        request = urllib.request.Request(f"{gateway.rstrip('/')}/metrics",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                metrics_text = r.read().decode()
        except urllib.error.HTTPError as e:
            raise cli.UserError(f"the gateway refused {gateway}/metrics ({e.code}): it needs an operator's token "
                                "(--bearer-token-file)") from None
        except OSError as e:
            raise cli.UserError(f"could not read {gateway}/metrics ({e}); give the gateway's base URL") from None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = work_dir / f"drift-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for (model, version), served in sorted(served_histograms(metrics_text).items()):
        count = sum(served.get("probability", served.get("mean", [0])))
        if count < min_count or version not in map(str, layout.versions(model_repo, model)):
            continue
        rows = compare(layout.card(model_repo, model, int(version)), served, threshold)
        for row in rows:
            row["picture"] = f"{model}-v{version}-{row['feature']}.png"
            picture(row, out / row["picture"], f"{model} v{version}")
        results[f"{model} v{version}"] = {"model": model, "version": int(version), "served": count, "features": rows,
                                          "drifted": [r["feature"] for r in rows if r["drift"]]}
    summary = {"gateway": gateway, "threshold": threshold, "min_count": min_count, "models": results,
               "folder": str(out)}
    write_text(out / "report.md", markdown(summary))
    write_text(out / "report.html", to_html(summary))
    return summary


def markdown(summary: dict) -> str:
    lines = [f"# Drift of served inputs against the training split ({summary['gateway']})", "",
             f"PSI threshold {summary['threshold']}; models with at least {summary['min_count']} served images.", ""]
    if not summary["models"]:
        lines.append("No model version has served enough images yet.")
    for key, m in summary["models"].items():
        verdict = f"**drift in {', '.join(m['drifted'])}**" if m["drifted"] else "no feature beyond the threshold"
        lines += [f"## {key}: {m['served']} served images; {verdict}", "",
                  "| feature | PSI | JS distance | served | training | drift |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['feature']} | {r['psi']:.3f} | {r['js']:.3f} | {r['served']} | {r['reference']} | "
                  f"{'yes' if r['drift'] else 'no'} |" for r in m["features"]]
        lines += [""] + [f"![{r['feature']}]({r['picture']})" for r in m["features"]] + [""]
    return "\n".join(lines) + "\n"


def to_html(summary: dict) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Drift</title><style>body{font-family:sans-serif}"
             "td,th{border:1px solid #ccc;padding:2px 8px}table{border-collapse:collapse}.drift{color:#b00}</style>"
             f"</head><body><h1>Drift of served inputs ({e(summary['gateway'])})</h1>"
             f"<p>PSI threshold {summary['threshold']}.</p>"]
    for key, m in summary["models"].items():
        parts.append(f"<h2>{e(key)}: {m['served']} served images"
                     + (f" <span class='drift'>drift in {e(', '.join(m['drifted']))}</span>" if m["drifted"] else "")
                     + "</h2><table><tr><th>feature</th><th>PSI</th><th>JS distance</th><th>drift</th></tr>")
        parts += [f"<tr><td>{e(r['feature'])}</td><td>{r['psi']:.3f}</td><td>{r['js']:.3f}</td>"
                  f"<td>{'yes' if r['drift'] else 'no'}</td></tr>" for r in m["features"]]
        parts.append("</table>" + "".join(f"<img src='{e(r['picture'])}' alt='{e(r['feature'])}'>" for r in m["features"]))
    return "".join(parts) + "</body></html>\n"
