"""What a site keeps: the JSON report (every figure to four decimals), the HTML page with its
pictures embedded (one file to archive or mail), and, on acceptance, ``site-profile.json``,
which names the report by its file name and the sha256 of its bytes so the model repository
can record the decision with its evidence."""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path

from components.core.atomic import write_bytes, write_text

REPORT, PAGE, PROFILE = "acceptance.json", "acceptance.html", "site-profile.json"
FIGURE_TITLES = {"roc": "ROC, verification part", "reliability_before": "Reliability, served probabilities",
                 "reliability_after": "Reliability, after the site's temperature",
                 "confusion_model_threshold": "At the model's own threshold",
                 "confusion_site_threshold": "At the site's threshold"}


def rounded(value):
    """Floats to four decimals (nan and infinities as null: JSON has neither)."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if hasattr(value, "item"):          # a numpy scalar
        return rounded(value.item())
    return value


def write(out: Path, report: dict, figures: dict[str, bytes]) -> tuple[Path, str]:
    """The JSON report and the page; (the report's path, the sha256 of its bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(rounded(report), indent=2, sort_keys=False) + "\n").encode()
    write_bytes(out / REPORT, data)
    write_text(out / PAGE, page(rounded(report), figures))
    return out / REPORT, hashlib.sha256(data).hexdigest()


def write_profile(out: Path, profile: dict, report_path: Path, digest: str) -> Path:
    body = {**rounded(profile), "acceptance": report_path.name, "acceptance_sha256": digest}
    write_text(out / PROFILE, json.dumps(body, indent=2) + "\n")
    return out / PROFILE


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    return f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def page(report: dict, figures: dict[str, bytes]) -> str:
    e = html.escape
    verdict = report["verdict"]
    ver = report["verification"] or {}
    rows = [("ROC-AUC", _ci(ver.get("roc_auc")))]
    for key, name in (("model_threshold", "model's own threshold"), ("site_threshold", "site's threshold")):
        if ver.get(key):
            point = ver[key]
            rows += [(f"sensitivity at the {name} ({point['threshold']:.4f})", _ci(point["sensitivity"])),
                     (f"specificity at the {name}", _ci(point["specificity"]))]
    for key, name in (("calibration_before", "ECE, served"), ("calibration_after", "ECE, site temperature")):
        if ver.get(key):
            rows.append((name, f"{ver[key]['ece']:.4f}"))
    detectable = report["detectable_auc_difference"]
    if detectable.get("difference") is not None:
        rows.append(("smallest detectable AUC difference", f"{detectable['difference']:.4f}"))
    choice = report["choice"] or {}
    if choice:
        rows.append(("site temperature (calibration part)", f"{choice['temperature']:.4f}"))
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    counts = report["split"]["counts"]
    split_rows = "".join(f"<tr><th>{e(part)}</th><td>{c['patients']}</td><td>{c['positive']}</td>"
                         f"<td>{c['negative']}</td><td>{c['images']}</td></tr>" for part, c in counts.items())
    images = "".join(f'<figure><img alt="{e(FIGURE_TITLES[name])}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{e(FIGURE_TITLES[name])}</figcaption></figure>'
                     for name, png in figures.items())
    reasons = "".join(f"<li>{e(r)}</li>" for r in verdict["reasons"])
    notes = "".join(f"<li>{e(n)}</li>" for n in verdict["notes"])
    model = report["model"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Site acceptance: {e(report['site'])}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}figure{{display:inline-block;margin:.5em}}
.verdict{{font-size:1.4em}}</style></head><body>
<h1>Site acceptance: {e(report['site'])}</h1>
<p>{e(model['name'])} version {model['version']}, served at {e(model['served_by'])}; {report['images']['scored']}
images scored, {report['images']['quarantined']} set aside.</p>
<p class="verdict">Verdict: <strong>{e(verdict['decision'])}</strong></p>
<ul>{reasons}</ul><ul>{notes}</ul>
<h2>Verification part</h2><table>{table}</table>
<p>{e(detectable.get('method', detectable.get('why', '')))}</p>
<h2>Patients</h2><table><tr><th>part</th><th>patients</th><th>positive</th><th>negative</th><th>images</th></tr>
{split_rows}</table>
<p>Enough patients: {e(report['enough_patients']['rule'])}.</p>
<h2>Pictures</h2>{images}
</body></html>
"""
