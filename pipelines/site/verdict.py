"""The verdict against the floors a site declares. A floor holds when the lower end of the
measure's 95% patient-bootstrap interval on the verification part reaches it: the site asks
what it can rely on, not what it measured once. Sensitivity and specificity are judged at the
site's operating point, the one its profile would carry. Without enough patients, or without a
floor, there is no verdict, and the reasons say why."""
from __future__ import annotations

from dataclasses import dataclass

from components.evaluation import stats

ACCEPT, REJECT, NO_VERDICT = "accept", "reject", "no verdict"
EXIT_CODES = {ACCEPT: 0, REJECT: 1, NO_VERDICT: 3}     # 2 is a usage error (components.core.cli)


@dataclass(frozen=True)
class Floors:
    auc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None

    def declared(self) -> dict[str, float]:
        return {k: v for k, v in (("roc_auc", self.auc), ("sensitivity", self.sensitivity),
                                  ("specificity", self.specificity)) if v is not None}


def _shown(m: dict) -> str:
    return f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def decide(measured: dict, floors: Floors, sizing: dict) -> dict:
    reasons = list(sizing["short"])
    if measured["choice"] is None:
        reasons.append("the calibration part lacks a class: no operating point can be chosen")
    if measured["verification"] is None:
        reasons.append("the verification part lacks a class: nothing can be judged")
    if not floors.declared():
        reasons.append("no floor was declared (--min-auc, --min-sensitivity, --min-specificity)")
    if reasons:
        return {"decision": NO_VERDICT, "reasons": reasons, "notes": []}
    ver = measured["verification"]
    values = {"roc_auc": ver["roc_auc"], "sensitivity": ver["site_threshold"]["sensitivity"],
              "specificity": ver["site_threshold"]["specificity"]}
    failed = False
    for name, floor in floors.declared().items():
        m = values[name]
        holds = m["ci_low"] >= floor
        failed |= not holds
        shown = "ROC-AUC" if name == "roc_auc" else f"{name} at the site's threshold"
        reasons.append(f"{shown} {_shown(m)}: its lower bound {'reaches' if holds else 'is below'} "
                       f"the floor {floor:.4f}")
    own = ver["model_threshold"]
    notes = [f"at the model's own threshold {own['threshold']:.4f}: sensitivity {_shown(own['sensitivity'])}, "
             f"specificity {_shown(own['specificity'])}"]
    if stats.temperature_at_upper_bound(measured["choice"]["temperature"]):
        notes.append("the temperature sits at its upper bound: the served probabilities carry little at this site")
    return {"decision": REJECT if failed else ACCEPT, "reasons": reasons, "notes": notes}
