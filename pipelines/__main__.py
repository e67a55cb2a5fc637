"""The pipelines' command line.

    python -m pipelines compile --out DIR
    python -m pipelines run --modality M --data PATH --model-repo DIR --work-dir DIR [--image-size N ...]
    python -m pipelines submit --host URL --modality M --data PATH [--image IMAGE ...]
    python -m pipelines audit RUN_DIR
    python -m pipelines report --work-dir DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components import catalog, cli


def _csv_choice(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        wrong = [v for v in values if v not in choices]
        if wrong or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of {', '.join(choices)}")
        return values
    return parse


def _training_options(ap: argparse.ArgumentParser) -> None:
    from pipelines.local import RunSettings

    d = RunSettings()
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument("--epochs", type=int, default=d.epochs, help="unfrozen: all epochs; progressive: after unfreezing")
    ap.add_argument("--head-epochs", type=int, default=d.head_epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--learning-rate", type=float, default=d.learning_rate)
    ap.add_argument("--weights", default=d.weights, help="imagenet, none, or a notop .h5 file")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--min-f1", type=float, default=d.min_f1, help="blessing rule: test F1 at least this")
    ap.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples for the 95%% CIs")
    ap.add_argument("--max-quarantine", type=float, default=d.max_quarantine)
    ap.add_argument("--keep-versions", type=int, default=d.keep_versions)
    ap.add_argument("--backbones", type=_csv_choice(catalog.BACKBONES), default=list(catalog.BACKBONES))
    ap.add_argument("--strategies", type=_csv_choice(catalog.STRATEGIES), default=list(catalog.STRATEGIES))


def settings_from(args):
    from pipelines.local import RunSettings

    return RunSettings(args.image_size, args.epochs, args.head_epochs, args.batch_size, args.learning_rate,
                       args.weights, args.seed, args.min_f1, args.bootstrap, args.max_quarantine,
                       args.keep_versions, args.backbones, args.strategies)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines", description="Kubeflow pipelines per modality")
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="one IR YAML per modality")
    c.add_argument("--out", required=True)

    r = sub.add_parser("run", help="run one modality locally (kfp.local.SubprocessRunner)")
    r.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    r.add_argument("--data", required=True, help="dataset root in the modality's source format")
    r.add_argument("--model-repo", required=True, help="model repository the blessed models are pushed to")
    r.add_argument("--work-dir", required=True, help="run folders (manifest, artifacts, logs) and the step cache")
    _training_options(r)

    s = sub.add_parser("submit", help="submit one modality to a Kubeflow Pipelines cluster")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    s.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    s.add_argument("--data", required=True, help="dataset path as the pods see it (the data PVC is mounted at /data)")
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

    p = sub.add_parser("report", help="cross-modality comparison (the report's tables 5.1-5.10) as HTML and Markdown")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--out", help="folder for report.html and report.md (default: the work dir)")
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

        local.run(args.modality, args.data, args.model_repo, args.work_dir, settings_from(args))
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
    elif args.command == "report":
        from pipelines import report

        for path in report.run(args.work_dir, args.out):
            print(path)


def main(argv=None) -> int:
    return cli.main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
