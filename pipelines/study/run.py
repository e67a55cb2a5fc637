"""The real-data study: the three modality pipelines on the real datasets with one profile (every
source of a modality in one pipeline: BUSI and BUS-BRA for ultrasound), the best configuration
of each modality re-trained with more seeds, patient-level cross-validation of it where the test
split holds too few patients, and the cross-modality report.

    python -m pipelines study --work-dir W --model-repo R --profile cpu|gpu [--data ROOT --modalities M,M]

A profile names every training parameter per modality in one place (``PROFILES``). ``cpu`` is
sized for a 2-core machine without a GPU and without ImageNet weights (18 models plus the seed
replicates in under two hours); ``gpu`` is the report's scale (224 px, 40 epochs; mixed
precision and XLA switch on by themselves on a GPU). Every model the study pushes carries its
profile in its model card (``training.profile``).

The best configuration of each modality is chosen by **validation** AUC, never test, and
re-trained with seeds 1..``seeds``-1 on the same split; those replicates go to
``W/replicates-repository``, not to the served repository, so a replicate never replaces the
model a clinician is served. Where the main test split holds fewer than ``CV_BELOW_PATIENTS``
patients, the same configuration is cross-validated patient-wise (``cv_folds`` folds, the CV
pipeline): its pooled out-of-fold predictions cover every patient once, and the modality's
targets are judged on them. ``W/study.json`` records which runs belong to the study; the report
reads it. Re-running the same command resumes: every finished step comes from the step cache.

The modalities run side by side, one process each, and so do a modality's seed replicates: on 2
cores much of a pipeline is single-threaded Python, and TensorFlow on one thread per process
(``local.side_by_side``) trains more images per second in all than one process with both cores.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from components.core import catalog, cli
from components.core.atomic import write_json
from pipelines import local
from pipelines.study import report
from pipelines.settings import RunSettings

STUDY = "study.json"
PARTS = "study-parts"                     # one record per modality, written by its own process
REPLICATES = "replicates-repository"
STUDY_ONLY = ("cv_folds",)               # profile entries the study reads itself (not pipeline settings)
CV_BELOW_PATIENTS = 20                    # test patients (or groups) below which the best configuration is cross-validated

# Every training parameter per modality and profile. The cpu values were chosen on the
# validation splits (never test) in short runs on this 2-core machine, and sized so that the
# whole study (18 models and 6 seed replicates) fits in two hours there; see the README.
# AdamW's decoupled weight decay 0.05 (not 1e-4, which at these learning rates does nothing):
# validation AUC .79 against .77 on BUSI (DenseNet121, 64 px, 24 epochs).
# The study pushes all 18 models (blessing rule F1 >= 0), since its purpose is to serve and compare
# every one; each card carries its test metrics. A run for deployment keeps the F1 >= 0.70 gate.
_SCRATCH = dict(weights="none", learning_rate=1e-3, weight_decay=0.05, min_f1=0.0)
PROFILES: dict[str, dict[str, dict]] = {
    "cpu": {
        # BUSI + BUS-BRA (1,049 train images): validation AUC (pooled) at 64 px plateaus by epoch
        # 4-8 (DenseNet121 .80 by epoch 4, .804 at 12; VGG16-BN .829 at epoch 7 of 10); 96 px gave
        # .816 at 10 epochs for 2.3 times the arithmetic, which two hours on 2 cores do not hold
        "ultrasound": dict(_SCRATCH, image_size=64, epochs=8, batch_size=16, warmup_epochs=1, patience=4,
                           augmentation="ultrasound"),
        # the MIAS crops are learnt fast: validation AUC .95 after 14 epochs (DenseNet121); 104 women
        # leave about 16 in test, so the best configuration is also cross-validated
        "mammography": dict(_SCRATCH, image_size=64, epochs=12, batch_size=16, warmup_epochs=1, patience=6,
                            augmentation="dihedral", cv_folds=4),
        # IDC tiles: validation AUC .92 after one epoch at 48 px, no better after three (13 patients);
        # 16 patients, so the targets are judged on 4-fold patient-level cross-validation
        "histopathology": dict(_SCRATCH, image_size=48, epochs=2, batch_size=32, warmup_epochs=0.5, patience=2,
                               augmentation="histology", cv_folds=4),
    },
    "gpu": {
        # threads=0: the node's every core for the CPU-side ops; a GPU run repeats on the same
        # machine only (components.train), so nothing is lost
        modality: dict(_SCRATCH, image_size=224, epochs=40, batch_size=32, warmup_epochs=2, patience=12,
                       augmentation=augmentation, cv_folds=5, threads=0)
        for modality, augmentation in (("ultrasound", "ultrasound"), ("mammography", "dihedral"),
                                       ("histopathology", "histology"))
    },
    # minutes, not hours: the whole study path (pipelines, seed replicates, CV, report) on small data
    "smoke": {
        modality: dict(_SCRATCH, image_size=32, epochs=2, batch_size=16, warmup_epochs=0, patience=2,
                       backbones=["densenet121"], bootstrap=200, min_f1=0.0, collapse_sd=0.0, cv_folds=2)
        for modality in ("ultrasound", "mammography", "histopathology")
    },
}
# Minutes one pipeline run takes with each profile (six models, evaluation and export included),
# measured on the machine each profile is for; printed up front as the estimate. Kept as data
# beside this module, so re-measuring does not change the code the step cache keys on.
TIMINGS = Path(__file__).with_name("timings.json")


def expected_minutes(profile: str, modalities: list[str], seeds: int, side_by_side: bool = False) -> tuple[float, float]:
    """(minutes until every modality's models are trained, minutes more for the seed replicates
    and the cross-validation), from each modality's measured minutes: in a row their sum, side
    by side the longest (on 2 cores the modalities share the cores, so those figures are measured
    side by side too). The second part scales with the seeds beyond the first."""
    timings = json.loads(TIMINGS.read_text())[profile]["side_by_side" if side_by_side else "in_a_row"]
    main = {m: timings["models"][m] for m in modalities}
    extra = {m: timings["replicates"][m] * max(0, seeds - 1) / 2 + timings["cross_validation"].get(m, 0)
             for m in modalities}
    if side_by_side:
        return max(main.values()), max(main[m] + extra[m] for m in modalities) - max(main.values())
    return sum(main.values()), sum(extra.values())


def settings(profile: str, modality: str, **overrides) -> RunSettings:
    if profile not in PROFILES:
        raise cli.UserError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    values = {k: v for k, v in PROFILES[profile][modality].items() if k not in STUDY_ONLY}
    return RunSettings(**{**values, "profile": profile, **overrides})


def run(data: str | Path, work_dir: str | Path, model_repo: str | Path, profile: str,
        modalities: list[str] | None = None, seeds: int = 3, echo=print, side_by_side: bool = True,
        part: bool = False) -> Path:
    """The study. With several modalities and ``side_by_side``, each modality's chain (its
    pipeline, then its seed replicates) runs in its own process at once (``part``: one such
    process, which writes its record to ``W/study-parts/`` and leaves the report to its parent)."""
    data, work_dir = Path(data), Path(work_dir)
    modalities = modalities or list(catalog.MODALITIES)
    chosen = {m: study_sources(m, data) for m in modalities}
    missing = [s.path for m in modalities for s in chosen[m] if not Path(s.path).exists()]
    if missing:
        folders = sorted({d["path"] for m in catalog.MODALITIES.values() for d in m.study_sources})
        raise cli.UserError(f"missing dataset folders {missing}: --data must hold {', '.join(f + '/' for f in folders)} "
                            "(see ../shared/datasets/README.md)")
    settings(profile, modalities[0])                      # an unknown profile fails here, before any work
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if part:
        for modality in modalities:
            write_json(work_dir / PARTS / f"{modality}.json",
                       _chain(modality, data, work_dir, model_repo, profile, seeds, echo))
        return work_dir / PARTS
    parallel = side_by_side and len(modalities) > 1
    models, extra = expected_minutes(profile, modalities, seeds, parallel)
    echo(f"study, profile {profile}: {', '.join(modalities)}{' side by side' if parallel else ''}; expected on the "
         f"machine the profile is for: about {models:.0f} minutes until all {6 * len(modalities)} models are trained, "
         f"evaluated and pushed, then about {extra:.0f} minutes more for the seed replicates and the "
         "cross-validation. Progress follows per task and per epoch.")
    record = {"profile": profile, "data": str(data.resolve()), "seeds": seeds, "modalities": {}}
    if (work_dir / STUDY).exists():      # a run of some modalities keeps the others' record
        earlier = json.loads((work_dir / STUDY).read_text())
        if earlier.get("profile") == profile:
            record["modalities"] = earlier.get("modalities", {})

    def save():
        write_json(work_dir / STUDY, {**record, "minutes": round((time.time() - started) / 60, 1)})

    if parallel:
        for modality in modalities:
            (work_dir / PARTS / f"{modality}.json").unlink(missing_ok=True)
        failed = local.side_by_side({m: [sys.executable, "-m", "pipelines", "study", "--part", "--data", str(data),
                                         "--work-dir", str(work_dir), "--model-repo", str(model_repo),
                                         "--profile", profile, "--modalities", m, "--seeds", str(seeds)]
                                     for m in modalities}, echo)
        for modality in modalities:
            if modality not in failed:
                record["modalities"][modality] = json.loads((work_dir / PARTS / f"{modality}.json").read_text())
        save()
        if failed:
            raise cli.UserError(f"the study of {', '.join(failed)} failed (its lines above say why); "
                                "the same command resumes from the step cache")
    else:
        for modality in modalities:
            record["modalities"][modality] = _chain(modality, data, work_dir, model_repo, profile, seeds, echo)
            save()
    for path in report.run(work_dir):
        echo(path)
    echo(f"study finished in {(time.time() - started) / 60:.1f} minutes")
    return work_dir / STUDY


def study_sources(modality: str, data: Path) -> list:
    from components.data import sources

    return sources.study_sources(modality, data)


def _chain(modality: str, data: Path, work_dir: Path, model_repo, profile: str, seeds: int, echo) -> dict:
    """One modality's pipeline, then its best configuration (on validation) with seeds
    1..seeds-1 and, where the test split holds too few patients, its cross-validation: those
    side by side, one process each (on 2 cores two finish well before two in a row)."""
    started = time.time()
    chosen = study_sources(modality, data)
    main = local.run(modality, chosen, model_repo, work_dir, settings(profile, modality), echo=echo)
    best = report.best_on_validation(main)
    if best is None:
        raise cli.UserError(f"{main} holds no trained model")
    _, backbone, strategy = catalog.parse_model_name(best)
    val_auc = report.validation_aucs(main)[best]
    test_patients = report.test_patients(main)
    folds = PROFILES[profile][modality].get("cv_folds", 0) if test_patients < CV_BELOW_PATIENTS else 0
    echo(f"{modality}: best on validation {best} (AUC {val_auc:.3f})"
         + (f"; seeds 1..{seeds - 1} follow" if seeds > 1 else "")
         + (f"; {test_patients} test patients: {folds}-fold cross-validation follows" if folds else ""))
    sources_file = work_dir / f"{modality}-sources.json"
    write_json(sources_file, [s.to_dict() for s in chosen])
    one = dict(backbones=[backbone], strategies=[strategy])
    runs = {f"{modality} seed {seed}": (local.new_run_id(modality), seed) for seed in range(1, seeds)}
    commands = {key: [
        sys.executable, "-m", "pipelines", "run", "--modality", modality, "--data", str(sources_file),
        "--model-repo", str(Path(work_dir) / REPLICATES), "--work-dir", str(work_dir), "--run-id", run_id,
        *cli.to_options(settings(profile, modality, seed=seed, **one))]
        for key, (run_id, seed) in runs.items()}
    cv_run = local.new_run_id(f"{modality}-cv") if folds else None
    if cv_run:
        commands[f"{modality} cv"] = [
            sys.executable, "-m", "pipelines", "cv", "--modality", modality, "--data", str(sources_file),
            "--work-dir", str(work_dir), "--run-id", cv_run, "--folds", str(folds),
            *cli.to_options(settings(profile, modality, **one))]
    failed = local.side_by_side(commands, echo)
    if failed:
        raise cli.UserError(f"the runs {', '.join(failed)} failed (their lines above say why)")
    return {"run": main.name, "best": {"backbone": backbone, "strategy": strategy, "validation_auc": val_auc},
            "replicates": [run_id for run_id, _ in runs.values()], "seeds": seeds, "test_patients": test_patients,
            **({"cross_validation": cv_run, "folds": folds} if cv_run else {}),
            "minutes": round((time.time() - started) / 60, 1)}
