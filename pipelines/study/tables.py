"""The report's tables, one function each, from a modality's loaded runs (``pipelines.study.report``).

Every figure is read from the evaluation folders the pipelines wrote; nothing is computed here
but the paired comparisons (from the predictions) and the wording of the verdicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.core import catalog
from components.evaluation import predictions
from components.evaluation import stats

COLUMNS = ("roc_auc", "pr_auc", "balanced_accuracy", "recall", "specificity", "f1", "brier")
HEADINGS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "balanced_accuracy": "balanced acc.",
            "recall": "sensitivity", "specificity": "specificity", "f1": "F1", "brier": "Brier",
            "accuracy": "accuracy", "precision": "precision",
            "sensitivity_at_specificity_0.80": "sensitivity at specificity 0.80"}
# Each modality's targets, judged on the best configuration chosen on
# validation: (metric, minimum, where) with where "test" (the pooled test split), "source:<name>"
# (one source's test records) or "out_of_fold" (the pooled cross-validation predictions)
TARGETS = {"histopathology": (("balanced_accuracy", 0.84, "out_of_fold"), ("f1", 0.72, "out_of_fold")),
           "ultrasound": (("roc_auc", 0.88, "source:busi"), ("roc_auc", 0.88, "source:busbra")),
           "mammography": (("roc_auc", 0.90, "test"),)}
FEW_PATIENTS = 10          # below this many test patients, intervals are flagged and no p-value is given

Table = tuple[str, list[str], list[list[str]]]


@dataclass
class Loaded:
    """One modality's study runs, read: every evaluation's metrics by model name."""
    modality: str
    run: Path
    metrics: dict[str, dict]                       # models, ensembles, baselines of the main run
    folders: dict[str, Path]
    validation_aucs: dict[str, float]
    replicates: list[dict] = field(default_factory=list)     # each replicate run's metrics by name
    out_of_fold: dict | None = None                # the pooled CV evaluation of the best configuration
    shortcut: dict | None = None                   # baselines' shortcut.json (several sources)

    @property
    def models(self) -> list[str]:
        return sorted(n for n in self.metrics if _kind(n) == "model")

    @property
    def best(self) -> str | None:
        aucs = {n: a for n, a in self.validation_aucs.items() if n in self.metrics}
        return max(aucs, key=aucs.get) if aucs else None

    @property
    def sources(self) -> list[str]:
        return sorted(next(iter(self.metrics.values()), {}).get("sources", {}))

    @property
    def clusters(self) -> int:
        return max((m.get("clusters", 0) for m in self.metrics.values()), default=0)


def _kind(name: str) -> str:
    return "baseline" if "-baseline-" in name else "ensemble" if "-ensemble-" in name else "model"


def short(name: str) -> str:
    return name.split("-", 1)[1] if "-" in name else name


def ci(m: dict, digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def _row(label: str, m: dict) -> list[str]:
    t = m.get("temperature", {})
    return [label] + [ci(m["metrics"][c]) for c in COLUMNS] + [
        f"{m['threshold']:.3f}", f"{t.get('value', 1):.2f}",
        f"{t.get('ece_before', float('nan')):.3f} -> {t.get('ece_after', float('nan')):.3f}"]


def strategy_tables(d: Loaded) -> list[Table]:
    header = ["model", *(HEADINGS[c] for c in COLUMNS), "threshold", "T", "ECE before -> after"]
    few = 0 < d.clusters < FEW_PATIENTS
    baselines = sorted(n for n in d.metrics if _kind(n) == "baseline")
    out = []
    for strategy in catalog.STRATEGIES:
        names = [n for n in (catalog.model_name(d.modality, b, strategy) for b in catalog.BACKBONES) if n in d.metrics]
        if not names:
            continue
        rows = [_row(catalog.parse_model_name(n)[1], d.metrics[n]) for n in names]
        ensemble = f"{d.modality}-ensemble-{strategy}"
        if ensemble in d.metrics:
            rows.append(_row("cohort ensemble (mean of the three)", d.metrics[ensemble]))
        rows += [_row(f"baseline: {n.rsplit('-', 1)[1]}", d.metrics[n]) for n in baselines]
        records = d.metrics[names[0]]["records"]
        flag = (f"; with only {d.clusters} patients a patient-level interval shows what resampling these "
                f"{d.clusters} gives, not the spread over new patients: read the per-patient table" if few else "")
        pooled = f", pooled over the sources {', '.join(d.sources)}" if len(d.sources) > 1 else ""
        out.append((f"{d.modality}: {strategy} models, cohort ensemble and baselines (test split{pooled}, n = "
                    f"{records} records from {d.clusters or '?'} patients/groups; 95% cluster-bootstrap CIs{flag})",
                    header, rows))
    return out


def per_source_table(d: Loaded) -> list[Table]:
    """Every model on each source's test records, at the threshold and temperature chosen on the
    pooled validation split: whether the threshold travels from one hospital to another."""
    if len(d.sources) < 2:
        return []
    rows = []
    for name in [*d.models, *sorted(n for n in d.metrics if _kind(n) == "ensemble"),
                 *sorted(n for n in d.metrics if _kind(n) == "baseline" and not n.endswith("-majority"))]:
        for source, s in d.metrics[name].get("sources", {}).items():
            m = s["metrics"]
            rows.append([short(name), source, f"{s['records']} ({s['clusters']})", s["positives"], ci(m["roc_auc"]),
                         ci(m["recall"]), ci(m["specificity"]), ci(m["balanced_accuracy"]),
                         f"{s['calibration']['ece']:.3f}", f"{s['sensitivity_at_specificity_0.80']:.3f}"])
    return [(f"{d.modality}: every model per source (test split; threshold and temperature chosen on the pooled "
             "validation split, so a threshold that does not travel shows as sensitivity and specificity that "
             "differ between sources)",
             ["model", "source", "records (patients)", "positives", "ROC-AUC", "sensitivity", "specificity",
              "balanced acc.", "ECE", "sensitivity at specificity 0.80"], rows)]


def shortcut_table(d: Loaded) -> list[Table]:
    """Can a model tell the source from the image, and does that explain its score?"""
    if len(d.sources) < 2 or not d.best:
        return []
    rows = []
    if d.shortcut:
        rows.append(["the source, from the image's intensity histogram (logistic regression)",
                     f"{d.shortcut['test_auc']:.3f}", "AUC of telling the sources apart"])
    prior = d.metrics.get(f"{d.modality}-baseline-source_prior")
    if prior:
        rows.append(["the label, from the source alone (each source's train prevalence)",
                     ci(prior["metrics"]["roc_auc"]), "pooled ROC-AUC; 0.5 within each source by construction"])
    best = d.metrics[d.best]
    rows.append([f"the label, {short(d.best)} (best on validation), pooled", ci(best["metrics"]["roc_auc"]), "ROC-AUC"])
    for source, s in best["sources"].items():
        rows.append([f"the label, {short(d.best)}, within {source} only", ci(s["metrics"]["roc_auc"]),
                     "ROC-AUC; the source cannot explain this part"])
    return [(f"{d.modality}: the shortcut check per source. {shortcut_verdict(d)}",
             ["what is predicted, from what", "value [95% CI]", "meaning"], rows)]


def shortcut_verdict(d: Loaded) -> str:
    best = d.metrics[d.best]
    pooled = best["metrics"]["roc_auc"]["value"]
    within = {s: v["metrics"]["roc_auc"]["value"] for s, v in best["sources"].items()}
    prior = d.metrics.get(f"{d.modality}-baseline-source_prior")
    parts = []
    if d.shortcut:
        told = d.shortcut["test_auc"]
        parts.append(f"The source can {'easily ' if told >= 0.9 else ''}be told from the image alone (AUC {told:.2f}"
                     f"{', so a CNN can learn it too' if told >= 0.75 else ''}).")
    if prior:
        parts.append(f"Knowing only the source gives a pooled AUC of {prior['metrics']['roc_auc']['value']:.2f}.")
    lowest = min(within.values()) if within else float("nan")
    explains = pooled - lowest > 0.05 and prior and prior["metrics"]["roc_auc"]["value"] > 0.55
    parts.append(f"The best model's AUC within each source ({', '.join(f'{s} {v:.2f}' for s, v in within.items())}) "
                 + ("is well below its pooled AUC, part of which the source explains." if explains else
                    f"is {'close to' if abs(pooled - lowest) <= 0.05 else 'near'} its pooled AUC {pooled:.2f}: "
                    "the source does not explain its score."))
    return " ".join(parts)


def comparisons(d: Loaded) -> list[dict]:
    """Paired cluster-bootstrap AUC differences: progressive vs unfrozen per backbone, the
    backbones within each strategy, and each cohort ensemble against its best single backbone
    (on validation); p-values Holm-corrected over all of them."""
    names = sorted(n for n in d.metrics if _kind(n) in ("model", "ensemble"))
    if len(names) < 2:
        return []
    loaded = dict(predictions.by_id(d.folders[n]) for n in names)
    ids = sorted(loaded[names[0]])
    y = np.array([loaded[names[0]][i][0] for i in ids])
    groups = predictions.groups_of(d.folders[names[0]], ids)
    m = d.modality
    pairs = [(catalog.model_name(m, b, "unfrozen"), catalog.model_name(m, b, "progressive")) for b in catalog.BACKBONES]
    for strategy in catalog.STRATEGIES:
        backbones = [catalog.model_name(m, b, strategy) for b in catalog.BACKBONES]
        pairs += [(a, b) for i, a in enumerate(backbones) for b in backbones[i + 1:]]
        cohort = {n: d.validation_aucs[n] for n in backbones if n in d.validation_aucs and n in loaded}
        if cohort:
            pairs.append((f"{m}-ensemble-{strategy}", max(cohort, key=cohort.get)))
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


def comparison_table(d: Loaded) -> list[Table]:
    rows_in = comparisons(d)
    if not rows_in:
        return []
    few = 0 < d.clusters < FEW_PATIENTS
    rows = [[f"{short(r['model_1'])} vs {short(r['model_2'])}", f"{r['auc_1']:.3f} vs {r['auc_2']:.3f}",
             f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
             *(("n/a", "n/a") if few else (stats.format_p(r["p_value"], r.get("p_value_is_bound", False)),
                                          stats.format_p(r["p_holm"], r.get("p_value_is_bound", False))))]
            for r in rows_in]
    return [(f"{d.modality}: paired comparisons (AUC difference, paired cluster bootstrap; p Holm-corrected over the "
             f"modality's {len(rows)} comparisons; '< x' where no resample reached zero, x = 1/resamples"
             + (f"; with only {d.clusters} test patients no p-value is given: the bootstrap draws too few "
                "distinct resamples to test anything" if few else "") + ")",
             ["pair", "AUC", "difference [95% CI]", "p", "p (Holm)"], rows)]


def seeds_table(d: Loaded) -> list[Table]:
    if not d.best or not d.replicates:
        return []
    seeds = [(0, d.metrics[d.best])] + [(i + 1, r.get(d.best)) for i, r in enumerate(d.replicates)]
    seeds = [(s, m) for s, m in seeds if m]
    keys = ("roc_auc", "balanced_accuracy", "f1")
    rows = [[f"seed {s}", *(f"{m['metrics'][c]['value']:.3f}" for c in keys)] for s, m in seeds]
    for label, fn in (("mean", np.mean), ("SD", lambda v: np.std(v, ddof=1) if len(v) > 1 else float("nan"))):
        rows.append([label, *(f"{fn([m['metrics'][c]['value'] for _, m in seeds]):.3f}" for c in keys)])
    return [(f"{d.modality}: best configuration on validation ({d.best}) re-trained with {len(seeds)} seeds, same split",
             ["seed", "ROC-AUC", "balanced acc.", "F1"], rows)]


def cross_validation_tables(d: Loaded) -> list[Table]:
    oof = d.out_of_fold
    if not oof:
        return []
    rows = [[f"fold {f['fold']}", f["patients"], f["records"], f["positives"], f"{f['roc_auc']:.3f}",
             f"{f['balanced_accuracy']:.3f}", f"{f['threshold']:.3f}"] for f in oof["folds"]]
    m = oof["metrics"]
    rows.append(["out-of-fold, pooled", oof["clusters"], oof["records"], oof["positives"], ci(m["roc_auc"]),
                 ci(m["balanced_accuracy"]), "each fold's"])
    pooled = [["pooled"] + [ci(m[c]) for c in COLUMNS]]
    pooled += [[source] + [ci(s["metrics"][c]) for c in COLUMNS] for source, s in oof.get("sources", {}).items()
               if len(oof.get("sources", {})) > 1]
    patients = [[r["patient_id"], r["records"], r["positives"], f"{r['mean_probability']:.3f}", f"{r['accuracy']:.3f}"]
                for r in oof["per_patient"]]
    k = len(oof["folds"])
    return [
        (f"{d.modality}: {k}-fold patient-level cross-validation of {oof['evaluated_model']} (each fold tested on "
         "patients it never saw, calibrated and thresholded on its own validation split)",
         ["fold", "test patients", "records", "positives", "ROC-AUC", "balanced acc.", "threshold"], rows),
        (f"{d.modality}: out-of-fold predictions of every patient, pooled (95% cluster-bootstrap CIs over "
         f"{oof['clusters']} patients)", ["records", *(HEADINGS[c] for c in COLUMNS)], pooled),
        (f"{d.modality}: per-patient out-of-fold results of {oof['evaluated_model']}",
         ["patient", "records", "positives", "mean probability", "accuracy"], patients)]


def per_patient_table(d: Loaded) -> list[Table]:
    if not d.best or d.out_of_fold or d.metrics[d.best].get("clusters", 99) >= 2 * FEW_PATIENTS:
        return []
    rows = [[r["patient_id"], r["records"], r["positives"], f"{r['mean_probability']:.3f}", f"{r['accuracy']:.3f}"]
            for r in d.metrics[d.best]["per_patient"]]
    return [(f"{d.modality}: per-patient results of {d.best} (test split)",
             ["patient", "records", "positives", "mean probability", "accuracy"], rows)]


def modality_tables(d: Loaded) -> list[Table]:
    return [*strategy_tables(d), *per_source_table(d), *shortcut_table(d), *comparison_table(d), *seeds_table(d),
            *cross_validation_tables(d), *per_patient_table(d)]


def _target_value(d: Loaded, metric: str, where: str) -> dict | None:
    m = d.metrics.get(d.best) if d.best else None
    if where == "out_of_fold":
        m = d.out_of_fold
    elif where.startswith("source:"):
        m = (m or {}).get("sources", {}).get(where.split(":", 1)[1])
    if not m:
        return None
    value = m.get(metric) if metric in m else m["metrics"][metric]
    return value if isinstance(value, dict) else {"value": value}


def target_verdicts(d: Loaded) -> list[str]:
    out = []
    for metric, minimum, where in TARGETS.get(d.modality, ()):
        scope = {"test": "test", "out_of_fold": "out-of-fold"}.get(where, where.replace("source:", "") + " test")
        value = _target_value(d, metric, where)
        if value is None:
            out.append(f"{HEADINGS.get(metric, metric)} ({scope}) not measured")
            continue
        verdict = (f"{HEADINGS.get(metric, metric)} ({scope}) {value['value']:.3f} "
                   f"{'meets' if value['value'] >= minimum else 'misses'} {minimum}")
        if "ci_low" in value:
            verdict += f" (lower bound {value['ci_low']:.3f}{'' if value['ci_low'] >= minimum else ' does not'})"
        out.append(verdict)
    return out


def best_table(loaded: dict[str, Loaded]) -> Table:
    rows = []
    for modality, d in loaded.items():
        if not d.best:
            continue
        m = d.metrics[d.best]
        strategy = catalog.parse_model_name(d.best)[2]
        ensemble = d.metrics.get(f"{modality}-ensemble-{strategy}")
        histogram = d.metrics.get(f"{modality}-baseline-histogram")
        by_source = "; ".join(f"{s} {ci(v['metrics']['roc_auc'])}" for s, v in m.get("sources", {}).items()) \
            if len(d.sources) > 1 else ""
        oof = d.out_of_fold
        rows.append([modality, f"{d.best} ({d.validation_aucs[d.best]:.3f})", ci(m["metrics"]["roc_auc"]), by_source,
                     ci(m["metrics"]["balanced_accuracy"]), ci(m["metrics"]["f1"]),
                     f"{m.get('sensitivity_at_specificity_0.80', float('nan')):.3f}",
                     ci(ensemble["metrics"]["roc_auc"]) if ensemble else "",
                     (f"AUC {ci(oof['metrics']['roc_auc'])}; BAC {ci(oof['metrics']['balanced_accuracy'])}; "
                      f"F1 {ci(oof['metrics']['f1'])} ({oof['clusters']} patients)") if oof else "",
                     ci(histogram["metrics"]["roc_auc"]) if histogram else "", "; ".join(target_verdicts(d))])
    return ("Best configuration per modality (chosen on validation AUC, shown in brackets; test figures with 95% "
            "cluster-bootstrap CIs)",
            ["modality", "model (validation AUC)", "ROC-AUC", "ROC-AUC per source", "balanced acc.", "F1",
             "sensitivity at specificity 0.80", "cohort ensemble ROC-AUC", "cross-validation (out-of-fold)",
             "histogram baseline ROC-AUC", "target"], rows)
