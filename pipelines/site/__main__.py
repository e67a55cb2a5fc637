"""Site acceptance from the command line.

    python -m pipelines.site accept --site NAME --model NAME [--version N | --label stable|canary] \\
        --serving HOST:PORT --source DIR --manifest CSV --image-column C --label-column C \\
        --label-map malignant=1,benign=0 --patient-column C --phi-key-file KEY \\
        --target-sensitivity 0.90 --min-auc 0.75 --min-sensitivity 0.80 --out DIR

Exit status: 0 accept (``site-profile.json`` written beside the report), 1 reject, 3 no verdict
(too few patients, or no floor declared: the message says how many are needed), 2 a usage error.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from components import extract
from components.core import catalog, cli, phi, tls
from components.data.sources import NAME
from components.evaluation import stats
from components.imaging import images

from pipelines.site import calibration, run, sizing, verdict

PROG = "python -m pipelines.site"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Site acceptance: a served model on a hospital's own "
                                                        "labelled images, before go-live")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("accept", help="verdict and operating point for one site")
    a.add_argument("--site", required=True, help="the site's name, as its profile will carry it")
    a.add_argument("--model", required=True, help="the served model's name, e.g. ultrasound-densenet121-unfrozen")
    which = a.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="the version to judge (default: the server's latest)")
    which.add_argument("--label", choices=("stable", "canary"), help="the labelled version to judge")
    a.add_argument("--serving", default=os.environ.get("SERVING_ADDRESS", "127.0.0.1:8500"),
                   help="model server host:port, gRPC (env SERVING_ADDRESS)")
    tls.add_arguments(a, os.environ, "serving-tls", "SERVING_TLS", "the model server over TLS: this client's")
    a.add_argument("--deadline-s", type=float, default=30.0, help="per request to the model server (default 30)")
    a.add_argument("--modality", choices=list(catalog.MODALITIES),
                   help="how the images are read (default: the model name's first part)")
    extract.add_source_arguments(a)
    a.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    a.add_argument("--calibration-fraction", type=float, default=0.5,
                   help="share of each class's patients that choose the operating point (default 0.5)")
    a.add_argument("--seed", type=int, default=0, help="the split's and the bootstrap's seed (default 0)")
    target = a.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-sensitivity", type=float, help="choose the threshold for this sensitivity")
    target.add_argument("--target-specificity", type=float, help="choose the threshold for this specificity")
    for floor in ("auc", "sensitivity", "specificity"):
        a.add_argument(f"--min-{floor}", type=float, help=f"the floor of the verification {floor}'s lower 95%% bound")
    a.add_argument("--max-half-width", type=float, default=sizing.DEFAULT_HALF_WIDTH,
                   help="the widest 95%% interval half-width a verdict accepts (default 0.10)")
    a.add_argument("--min-patients-per-class", type=int, default=sizing.DEFAULT_MIN_PER_CLASS,
                   help="patients of each class each part needs at least (default 10)")
    a.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES, help="resamples (default 2000)")
    a.add_argument("--out", required=True, help="folder of acceptance.json, acceptance.html (and site-profile.json)")
    return ap


def _modality(args) -> str:
    if args.modality:
        return args.modality
    guess = args.model.split("-", 1)[0]
    if guess not in catalog.MODALITIES:
        raise cli.UserError(f"cannot tell the modality from the model name {args.model!r}: give --modality")
    return guess


def accept(args) -> int:
    if not NAME.match(args.site):
        raise cli.UserError(f"--site {args.site!r} must be letters, digits, '_', '.' or '-' (at most 64)")
    key = phi.require(phi.load_key(args.phi_key_file), "site acceptance")     # every site's patients are PHI
    target = calibration.Target("sensitivity", args.target_sensitivity) if args.target_sensitivity is not None \
        else calibration.Target("specificity", args.target_specificity)
    outcome = run.run(run.Request(
        site=args.site, model=args.model, version=args.version, label=args.label, serving=args.serving,
        tls=tls.from_arguments(args, "serving-tls"), deadline_s=args.deadline_s, modality=_modality(args),
        sources=extract.source_from_args(args), key=key, max_pixels=args.max_pixels,
        fraction=args.calibration_fraction, seed=args.seed, target=target,
        floors=verdict.Floors(args.min_auc, args.min_sensitivity, args.min_specificity),
        rule=sizing.Rule(args.max_half_width, args.min_patients_per_class), bootstrap=args.bootstrap,
        out=Path(args.out)))
    decided = outcome["verdict"]
    print(f"{args.site}: {decided['decision']} ({args.model} version {outcome['model']['version']})")
    for line in decided["reasons"] + decided["notes"]:
        print(f"  - {line}")
    detectable = outcome["detectable_auc_difference"]
    if detectable["difference"] is not None:
        print(f"  - the verification part can detect an AUC difference of {detectable['difference']:.4f} "
              f"(Hanley-McNeil at AUC {detectable['at_auc']:.4f}, 80% power, 5% two-sided)")
    print(f"report: {outcome['written']['report']}")
    if outcome["written"].get("profile"):
        print(f"profile: {outcome['written']['profile']}")
    return verdict.EXIT_CODES[decided["decision"]]


def main(argv=None) -> int:
    code = {}

    def _run(args, _extra):
        code["exit"] = accept(args)

    return cli.main(build_parser(), _run, argv) or code.get("exit", 0)


if __name__ == "__main__":
    raise SystemExit(main())
