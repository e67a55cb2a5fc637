"""The real-data study: the three modality pipelines on the real datasets with one profile, the
best configuration of each modality re-trained with more seeds, and the cross-modality report.

    python -m pipelines study --work-dir W --model-repo R --profile cpu|gpu [--data ROOT --modalities M,M]

A profile names every training parameter per modality in one place (``PROFILES``). ``cpu`` is
sized for a 2-core machine without a GPU and without ImageNet weights (18 models plus the seed
replicates in under two hours); ``gpu`` is the report's scale (224 px, 40 epochs; mixed
precision and XLA switch on by themselves on a GPU). Every model the study pushes carries its
profile in its model card (``training.profile``).

The best configuration of each modality is chosen by **validation** AUC, never test, and
re-trained with seeds 1..``seeds``-1 on the same split; those replicates go to
``W/replicates-repository``, not to the served repository, so a replicate never replaces the
model a clinician is served. ``W/study.json`` records which runs belong to the study; the report
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

from components import catalog, cli
from components.atomic import write_json
from pipelines import local, report
from pipelines.settings import RunSettings

STUDY = "study.json"
PARTS = "study-parts"                     # one record per modality, written by its own process
REPLICATES = "replicates-repository"

# Every training parameter per modality and profile. The cpu values were chosen on the
# validation splits (never test) in short runs on this 2-core machine, and sized so that the
# whole study (18 models and 6 seed replicates) fits in two hours there; see the README.
# AdamW's decoupled weight decay 0.05 (not 1e-4, which at these learning rates does nothing):
# validation AUC .79 against .77 on BUSI (DenseNet121, 64 px, 24 epochs).
# The study pushes all 18 models (blessing rule F1 >= 0), since its purpose is to serve and compare
# every one; each card carries its test metrics. A run for deployment keeps the F1 >= 0.70 gate.
_SCRATCH = dict(weights="none", learning_rate=1e-3, weight_decay=0.05, min_f1=0.0)   # VGG16: lr / 10
PROFILES: dict[str, dict[str, dict]] = {
    "cpu": {
        # 14 epochs, not 24: in the 24-epoch run of 2026-12-01 no BUSI model's validation AUC rose after
        # epoch 12 (best epochs 3, 7, 9 and 11 of four models), and ultrasound, the longest chain,
        # made the study take over two hours on 2 cores
        "ultrasound": dict(_SCRATCH, image_size=64, epochs=14, batch_size=16, warmup_epochs=1, patience=8,
                           augmentation="ultrasound"),
        # the MIAS crops are learnt fast: validation AUC .95 after 14 epochs (DenseNet121)
        "mammography": dict(_SCRATCH, image_size=64, epochs=12, batch_size=16, warmup_epochs=1, patience=6,
                            augmentation="dihedral"),
        # 3,505 IDC tiles: validation AUC .92 after one epoch at 48 px, no better after three
        "histopathology": dict(_SCRATCH, image_size=48, epochs=2, batch_size=32, warmup_epochs=0.5, patience=2,
                               augmentation="histology"),
    },
    "gpu": {
        modality: dict(_SCRATCH, image_size=224, epochs=40, batch_size=32, warmup_epochs=2, patience=12,
                       augmentation=augmentation)
        for modality, augmentation in (("ultrasound", "ultrasound"), ("mammography", "dihedral"),
                                       ("histopathology", "histology"))
    },
    # minutes, not hours: the whole study path (pipelines, seed replicates, report) on small data
    "smoke": {
        modality: dict(_SCRATCH, image_size=32, epochs=2, batch_size=16, warmup_epochs=0, patience=2,
                       backbones=["densenet121"], bootstrap=200, min_f1=0.0)
        for modality in ("ultrasound", "mammography", "histopathology")
    },
}
# Minutes one pipeline run takes with each profile (six models, evaluation and export included),
# measured on the machine each profile is for; printed up front as the estimate. Kept as data
# beside this module, so re-measuring does not change the code the step cache keys on.
TIMINGS = Path(__file__).with_name("study_timings.json")


def expected_minutes(profile: str, modalities: list[str], seeds: int, side_by_side: bool = False) -> float:
    """Each modality's measured minutes (its pipeline and seed replicates): their sum in a row,
    the longest side by side (on 2 cores the modalities share the cores, so that figure is measured
    side by side too)."""
    timings = json.loads(TIMINGS.read_text())[profile]
    minutes = {m: timings["side_by_side" if side_by_side else "in_a_row"][m] * (1 + (seeds - 1) / 6) for m in modalities}
    return max(minutes.values()) if side_by_side else sum(minutes.values())


def settings(profile: str, modality: str, **overrides) -> RunSettings:
    if profile not in PROFILES:
        raise cli.UserError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return RunSettings(**{**PROFILES[profile][modality], "profile": profile, **overrides})


def run(data: str | Path, work_dir: str | Path, model_repo: str | Path, profile: str,
        modalities: list[str] | None = None, seeds: int = 3, echo=print, side_by_side: bool = True,
        part: bool = False) -> Path:
    """The study. With several modalities and ``side_by_side``, each modality's chain (its
    pipeline, then its seed replicates) runs in its own process at once (``part``: one such
    process, which writes its record to ``W/study-parts/`` and leaves the report to its parent)."""
    data, work_dir = Path(data), Path(work_dir)
    modalities = modalities or list(catalog.MODALITIES)
    sources = {m: data / catalog.modality(m).study_dataset for m in modalities}
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        raise cli.UserError(f"missing dataset folders {missing}: --data must hold busi/, idc/ and ddsm/ "
                            "(see ../shared/datasets/README.md)")
    settings(profile, modalities[0])                      # an unknown profile fails here, before any work
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if part:
        for modality in modalities:
            write_json(work_dir / PARTS / f"{modality}.json",
                       _chain(modality, sources[modality], work_dir, model_repo, profile, seeds, echo))
        return work_dir / PARTS
    parallel = side_by_side and len(modalities) > 1
    minutes = expected_minutes(profile, modalities, seeds, parallel)
    echo(f"study, profile {profile}: {', '.join(modalities)}{' side by side' if parallel else ''}; expected about "
         f"{minutes:.0f} minutes on the machine the profile is for. Progress follows per task and per epoch.")
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
            record["modalities"][modality] = _chain(modality, sources[modality], work_dir, model_repo, profile,
                                                    seeds, echo)
            save()
    for path in report.run(work_dir):
        echo(path)
    echo(f"study finished in {(time.time() - started) / 60:.1f} minutes")
    return work_dir / STUDY


def _chain(modality: str, source: Path, work_dir: Path, model_repo, profile: str, seeds: int, echo) -> dict:
    """One modality's pipeline, then its best configuration (on validation) with seeds 1..seeds-1."""
    started = time.time()
    main = local.run(modality, source, model_repo, work_dir, settings(profile, modality), echo=echo)
    best = report.best_on_validation(main)
    if best is None:
        raise cli.UserError(f"{main} holds no trained model")
    _, backbone, strategy = catalog.parse_model_name(best)
    val_auc = report.validation_aucs(main)[best]
    echo(f"{modality}: best on validation {best} (AUC {val_auc:.3f})"
         + (f"; seeds 1..{seeds - 1} follow" if seeds > 1 else ""))
    # the seed replicates side by side, one process each (on 2 cores two finish well before two in a row)
    runs = {f"{modality} seed {seed}": local.new_run_id(modality) for seed in range(1, seeds)}
    failed = local.side_by_side({key: [
        sys.executable, "-m", "pipelines", "run", "--modality", modality, "--data", str(source),
        "--model-repo", str(Path(work_dir) / REPLICATES), "--work-dir", str(work_dir), "--run-id", run_id,
        *cli.to_options(settings(profile, modality, seed=seed, backbones=[backbone], strategies=[strategy]))]
        for seed, (key, run_id) in enumerate(runs.items(), start=1)}, echo)
    if failed:
        raise cli.UserError(f"the replicate runs {', '.join(failed)} failed (their lines above say why)")
    return {"run": main.name, "best": {"backbone": backbone, "strategy": strategy, "validation_auc": val_auc},
            "replicates": list(runs.values()), "seeds": seeds, "minutes": round((time.time() - started) / 60, 1)}
