"""Run one modality's pipeline on this machine with ``kfp.local.SubprocessRunner``.

Each run gets its own folder under ``--work-dir``: the compiled pipeline it ran
(``pipeline.yaml``), every task's outputs, the task logs (``run.log``) and, once it has
succeeded, ``manifest.json`` for auditors. Steps are cached in ``<work-dir>/cache`` (kfp's local
runner has none of its own), so re-running with unchanged inputs reuses their outputs.
"""
from __future__ import annotations

import contextlib
import datetime
import secrets
import sys
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from components.core import catalog, cli
from pipelines import audit, definition
from pipelines.settings import RunSettings

LOG = "run.log"


def new_run_id(modality: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{modality}-{stamp}-{secrets.token_hex(2)}"


def sources_of(data) -> list:
    """The run's sources: a dataset path (one source, in the modality's format), a sources JSON
    file, or a list of ``components.data.sources.Source``."""
    from components.data import sources

    if isinstance(data, (list, tuple)):
        return sources.parse(list(data))
    data = Path(data).resolve()
    if not data.exists():
        raise cli.UserError(f"--data {data} does not exist: give the dataset root (DDSM .tfrecords, class "
                            "folders or the IDC tree), e.g. the output of components.sample_data, or a sources JSON file")
    chosen = sources.parse(data) if data.suffix == ".json" else [sources.single(data)]
    missing = [s.path for s in chosen if not Path(s.path).exists()]
    if missing:
        raise cli.UserError(f"source folder(s) {', '.join(missing)} do not exist")
    return chosen


def run(modality: str, data, model_repo: str | Path, work_dir: str | Path,
        settings: RunSettings = RunSettings(), run_id: str | None = None, echo=print) -> Path:
    """Run the modality's pipeline on ``data`` (see ``sources_of``); returns the run folder (with
    its verified manifest)."""
    catalog.modality(modality)
    chosen = sources_of(data)
    model_repo, work_dir = Path(model_repo).resolve(), Path(work_dir).resolve()
    _check_weights(settings)
    run_dir = work_dir / (run_id or new_run_id(modality))
    run_dir.mkdir(parents=True, exist_ok=False)
    spec_path = definition.compile_to(modality, run_dir / "pipeline.yaml", backbones=tuple(settings.backbones),
                                      strategies=tuple(settings.strategies))
    manifest = _execute(run_dir, spec_path, modality, settings, chosen, work_dir, echo, model_repo=str(model_repo))
    pushed = [p for p in manifest["pushed"] if p["pushed"] or p["version"]]
    echo(f"run {run_dir.name} finished: {len(pushed)} of {len(manifest['pushed'])} models in {model_repo}; "
         f"manifest {run_dir / audit.MANIFEST}")
    return run_dir


def run_cv(modality: str, data, work_dir: str | Path, settings: RunSettings, folds: int,
           run_id: str | None = None, echo=print) -> Path:
    """Patient-level cross-validation of the one configuration ``settings`` names (one backbone,
    one strategy): the modality's CV pipeline; returns the run folder."""
    catalog.modality(modality)
    if len(settings.backbones) != 1 or len(settings.strategies) != 1:
        raise cli.UserError("cross-validation runs one configuration: give one backbone and one strategy")
    chosen = sources_of(data)
    work_dir = Path(work_dir).resolve()
    _check_weights(settings)
    run_dir = work_dir / (run_id or new_run_id(f"{modality}-cv"))
    run_dir.mkdir(parents=True, exist_ok=False)
    spec_path = definition.compile_cv_to(modality, run_dir / "pipeline.yaml", settings.backbones[0],
                                         settings.strategies[0], folds)
    _execute(run_dir, spec_path, modality, settings, chosen, work_dir, echo)
    echo(f"run {run_dir.name} finished: {folds}-fold cross-validation; manifest {run_dir / audit.MANIFEST}")
    return run_dir


def _check_weights(settings: RunSettings) -> None:
    if settings.weights not in ("imagenet", "none") and not Path(settings.weights).is_file():
        raise cli.UserError(f"--weights {settings.weights}: no such file; use imagenet, none, or a notop .h5 path")


def _execute(run_dir: Path, spec_path: str, modality: str, settings: RunSettings, chosen: list, work_dir: Path,
             echo, **extra) -> dict:
    """Run the compiled pipeline at ``spec_path`` with the parameters it declares, then write
    and return the run's manifest."""
    from kfp import components, local

    declared = set(audit.pipeline_spec(spec_path)["root"]["inputDefinitions"]["parameters"])
    arguments = {**settings.arguments(), "sources": [s.to_dict() for s in chosen], "cache_dir": str(work_dir / "cache"),
                 **extra}
    arguments = {k: v for k, v in arguments.items() if k in declared}
    started = time.time()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir), raise_on_error=True)
    pipeline = components.load_component_from_file(spec_path)   # run exactly the YAML the manifest records
    tasks = audit.task_names(spec_path)
    echo(f"run {run_dir.name}: {len(tasks)} tasks; task logs in {run_dir / LOG}")
    try:
        with _progress(run_dir, tasks, echo), open(run_dir / LOG, "w", buffering=1) as log, \
                contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")     # kfp warns that our image name lacks 'python'
            pipeline(**arguments)
    except RuntimeError as e:
        tail = "".join((run_dir / LOG).read_text().splitlines(keepends=True)[-25:])
        raise cli.UserError(f"{e}\n--- last lines of {run_dir / LOG} ---\n{tail}") from None
    manifest = audit.write_manifest(run_dir, modality=modality, arguments=arguments, settings=asdict(settings),
                                    sources=chosen, started=started)
    echo(f"run {run_dir.name}: {time.time() - started:.0f} s")
    return manifest


def side_by_side(commands: dict[str, list[str]], echo=print) -> list[str]:
    """Run every command at once, one process each, each output line shown prefixed with its
    key; returns the keys whose command failed. On 2 cores this finishes well before the same
    commands in a row: much of a pipeline run is single-threaded Python (graph tracing,
    SavedModel export, the runner itself), which overlaps with another run's training."""
    import os
    import subprocess

    if not commands:
        return []
    # with at least as many processes as cores, each TensorFlow runs on one thread: three such
    # processes train DenseNet121 at 64 px 36 % faster together than three with a thread pool
    # each on 2 cores (72.6 against 53.4 images/s), since the pools no longer preempt each other
    threads = str(max(1, (os.cpu_count() or 1) // len(commands)))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
           "OMP_NUM_THREADS": threads}
    procs = {key: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   env=env)
             for key, cmd in commands.items()}
    width = max(map(len, procs)) + 1

    def relay(key, proc):
        for line in proc.stdout:
            echo(f"{key:<{width}}{line.rstrip()}")

    relays = [threading.Thread(target=relay, args=item) for item in procs.items()]
    for t in relays:
        t.start()
    for t in relays:
        t.join()
    return [key for key, proc in procs.items() if proc.wait() != 0]


def _epoch_lines(log: Path, offset: int, show) -> int:
    """Show the ``[epoch]`` lines (components.train.EpochLine) written to the run log since
    ``offset``; returns the new offset. A training task is otherwise silent for its whole run."""
    if not log.exists():
        return offset
    with log.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[:chunk.rfind(b"\n") + 1]
    for line in complete.decode("utf-8", "replace").splitlines():
        at = line.find("[epoch]")
        if at >= 0:
            show(line[at:])
    return offset + len(complete)


@contextlib.contextmanager
def _progress(run_dir: Path, tasks: dict[str, str], echo):
    """A line (and on a terminal, a bar) per finished task, from the task folders the runner writes:
    kfp.local itself only streams every task's raw log."""
    stop = threading.Event()
    out = sys.stdout                      # captured before the task logs are redirected to run.log

    def watch():
        bar = cli.progress(total=len(tasks), desc=run_dir.name, unit="task")
        done, t0, log_offset = set(), time.time(), 0
        while True:
            finishing = stop.is_set()
            log_offset = _epoch_lines(run_dir / LOG, log_offset, lambda line: (bar.write(f"      {line}", file=out),
                                                                                out.flush()))
            for task_dir in run_dir.glob("*/*/executor_output.json"):
                name = task_dir.parent.name
                if name not in done:
                    done.add(name)
                    bar.update(1)
                    cached = "(cached) " if '"cached": true' in task_dir.read_text() else ""
                    # tqdm.write keeps the line above the bar on a terminal
                    bar.write(f"  [{len(done):>2}/{len(tasks)}] {tasks.get(name, name)} {cached}"
                              f"at {time.time() - t0:.0f} s", file=out)
                    out.flush()
            if finishing:
                break
            stop.wait(1.0)
        bar.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
