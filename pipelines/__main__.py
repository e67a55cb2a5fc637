"""The pipelines' command line.

    python -m pipelines compile --out DIR
    python -m pipelines run --modality M --data PATH|SOURCES.json --model-repo DIR --work-dir DIR [--image-size N ...]
    python -m pipelines cv --modality M --data PATH|SOURCES.json --work-dir DIR --backbones B --strategies S [--folds 4]
    python -m pipelines submit --host URL --modality M --data PATH [--image IMAGE ...]
    python -m pipelines study --work-dir DIR --model-repo DIR --profile cpu|gpu [--data ROOT --modalities M,M]
    python -m pipelines audit RUN_DIR
    python -m pipelines report --work-dir DIR
    python -m pipelines drift --model-repo DIR --work-dir DIR --gateway URL
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from components.core import catalog, cli


def _training_options(ap: argparse.ArgumentParser) -> None:
    from pipelines.settings import RunSettings

    cli.add_options(ap, RunSettings)


def settings_from(args):
    from pipelines.settings import RunSettings

    return cli.options_to(RunSettings, args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines", description="Kubeflow pipelines per modality")
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="one IR YAML per modality")
    c.add_argument("--out", required=True)

    r = sub.add_parser("run", help="run one modality locally (kfp.local.SubprocessRunner)")
    r.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    r.add_argument("--data", required=True, help="dataset root in the modality's source format, or a JSON file "
                                                  "listing one or more sources (components.data.sources)")
    r.add_argument("--model-repo", required=True, help="model repository the blessed models are pushed to")
    r.add_argument("--work-dir", required=True, help="run folders (manifest, artifacts, logs) and the step cache")
    r.add_argument("--run-id", help="name of the run folder (default: <modality>-<UTC time>-<random>)")
    _training_options(r)

    v = sub.add_parser("cv", help="patient-level cross-validation of one configuration (one backbone, one strategy)")
    v.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    v.add_argument("--data", required=True, help="dataset root, or a JSON file listing the sources")
    v.add_argument("--work-dir", required=True)
    v.add_argument("--run-id")
    v.add_argument("--folds", type=int, default=4, help="folds (default 4)")
    _training_options(v)

    s = sub.add_parser("submit", help="submit one modality to a Kubeflow Pipelines cluster")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    s.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    s.add_argument("--data", required=True, help="dataset path as the pods see it (the data PVC is mounted at /data), "
                                                  "or a JSON file of sources with such paths")
    s.add_argument("--image", help="component image (default: the pipeline's)")
    s.add_argument("--experiment", default="bcimaging")
    s.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    s.add_argument("--data-pvc", default="bcimaging-data")
    s.add_argument("--model-repo-pvc", default="model-repository")
    s.add_argument("--accelerator-type", default="nvidia.com/gpu")
    s.add_argument("--accelerator-limit", type=int, default=1)
    _training_options(s)

    a = sub.add_parser("audit", help="verify a run's manifest.json and print a report")
    a.add_argument("run_dir")

    st = sub.add_parser("study", help="the real-data study: every modality's pipeline with one profile, then the report")
    st.add_argument("--data", default="../shared/datasets",
                    help="root holding busi/, idc/ and ddsm/ (default ../shared/datasets)")
    st.add_argument("--work-dir", required=True)
    st.add_argument("--model-repo", required=True)
    st.add_argument("--profile", required=True, choices=["cpu", "gpu", "smoke"],
                    help="cpu: a 2-core machine, under 2 hours; gpu: the report's scale (224 px, 40 epochs); "
                         "smoke: a few minutes on small data, to check the path")
    st.add_argument("--modalities", type=cli.csv_choice(tuple(catalog.MODALITIES)), default=list(catalog.MODALITIES))
    st.add_argument("--seeds", type=int, default=3, help="seeds of each modality's best configuration (default 3)")
    st.add_argument("--in-a-row", action="store_true",
                    help="run the modalities one after another instead of side by side (one process each)")
    st.add_argument("--part", action="store_true", help=argparse.SUPPRESS)   # one side-by-side process

    d = sub.add_parser("drift", help="served inputs against the training split: PSI per feature, a report")
    d.add_argument("--model-repo", required=True)
    d.add_argument("--work-dir", required=True, help="the report goes to WORK/drift-<time>/")
    d.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    d.add_argument("--threshold", type=float, default=0.2, help="PSI above which a feature has drifted (default 0.2)")
    d.add_argument("--min-count", type=int, default=30, help="served images a model version needs (default 30)")
    d.add_argument("--fail-on-drift", action="store_true", help="exit 1 when any feature drifted")
    d.add_argument("--bearer-token-file", default=os.environ.get("GATEWAY_TOKEN_FILE"),
                   help="a file holding a bearer token with the operator role, for the gateway's /metrics "
                        "(env GATEWAY_TOKEN_FILE)")

    p = sub.add_parser("report", help="cross-modality comparison (the report's tables 5.1-5.10) as HTML and Markdown")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--out", help="folder for report.html and report.md (default: the work dir)")
    p.add_argument("--results-page", "--readme", dest="results_page", metavar="PAGE",
                   help="also write the headline table into this page's study block (docs/results.md)")
    return ap


def _run(args, _):
    if args.command == "compile":
        from pipelines import definition

        for modality in catalog.MODALITIES:
            path = Path(args.out) / f"{definition.pipeline_name(modality)}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            print(definition.compile_to(modality, path))
    elif args.command == "run":
        from pipelines import local

        local.run(args.modality, args.data, args.model_repo, args.work_dir, settings_from(args), run_id=args.run_id)
    elif args.command == "cv":
        from pipelines import local

        local.run_cv(args.modality, args.data, args.work_dir, settings_from(args), args.folds, run_id=args.run_id)
    elif args.command == "submit":
        from pipelines import submit

        print(submit.submit(args.host, args.modality, args.data, settings_from(args), image=args.image,
                            experiment=args.experiment, namespace=args.namespace, data_pvc=args.data_pvc,
                            model_repo_pvc=args.model_repo_pvc, accelerator_type=args.accelerator_type,
                            accelerator_limit=args.accelerator_limit))
    elif args.command == "audit":
        from pipelines import audit

        manifest, problems = audit.verify(args.run_dir)
        if not manifest:
            raise cli.UserError("; ".join(problems))
        print(audit.report(manifest, problems))
        if problems:
            raise SystemExit(1)
    elif args.command == "study":
        from pipelines.study import run as study

        study.run(args.data, args.work_dir, args.model_repo, args.profile, args.modalities, seeds=args.seeds,
                  side_by_side=not args.in_a_row, part=args.part)
    elif args.command == "drift":
        from pipelines.monitoring import drift

        token = Path(args.bearer_token_file).read_text().strip() if args.bearer_token_file else None
        summary = drift.run(args.model_repo, args.work_dir, args.gateway, args.threshold, args.min_count, token=token)
        for key, m in summary["models"].items():
            shown = ", ".join(f"{r['feature']} {r['psi']:.2f}" for r in m["features"])
            print(f"{key} ({m['served']} served): {'DRIFT in ' + ', '.join(m['drifted']) if m['drifted'] else 'no drift'}"
                  f"; PSI {shown}")
        print(f"report: {summary['folder']}/report.md")
        if args.fail_on_drift and any(m["drifted"] for m in summary["models"].values()):
            raise SystemExit(1)
    elif args.command == "report":
        from pipelines.study import report

        for path in report.run(args.work_dir, args.out, args.results_page):
            print(path)


def main(argv=None) -> int:
    return cli.main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
