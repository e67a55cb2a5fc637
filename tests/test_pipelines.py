"""The Kubeflow pipelines: compiled IR for the cluster, a real local run with
kfp.local.SubprocessRunner (histopathology models of two backbones into a model repository), the audit
trail and its tamper detection, step caching on a re-run, the cross-modality report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from components.core import catalog
from pipelines.study import report
from pipelines.study import run as study
from pipelines.settings import RunSettings
from serving import configs, layout
from tests.conftest import run_cli


IMAGE_PARAM = "{{$.inputs.parameters['pipelinechannel--image']}}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("compiled")
    run_cli("pipelines", "compile", "--out", str(out))
    files = sorted(out.glob("*.yaml"))
    assert [f.name for f in files] == [f"bcimaging-{m}.yaml" for m in sorted(catalog.MODALITIES)]
    return {f.stem.removeprefix("bcimaging-"): list(yaml.safe_load_all(f.read_text())) for f in files}


def _tasks(spec: dict) -> dict[str, dict]:
    return spec["root"]["dag"]["tasks"]


def _executor(spec: dict, task: dict) -> dict:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_compile_writes_one_pipeline_per_modality_with_six_gpu_training_tasks(compiled):
    for modality, (spec, platform) in compiled.items():
        tasks = _tasks(spec)
        train = {n: t for n, t in tasks.items() if t["taskInfo"]["name"].startswith("train ")}
        assert sorted(t["taskInfo"]["name"] for t in train.values()) == sorted(
            f"train {catalog.model_name(modality, b, s)}" for b in catalog.BACKBONES for s in catalog.STRATEGIES)
        inputs = spec["root"]["inputDefinitions"]["parameters"]
        assert inputs["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
        assert inputs["accelerator_limit"]["defaultValue"] == 1
        for name, task in train.items():
            accelerator = _executor(spec, task)["resources"]["accelerator"]
            assert "accelerator_type" in accelerator["resourceType"] and "accelerator_limit" in accelerator["resourceCount"]
            k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
                spec["components"][task["componentRef"]["name"]]["executorLabel"]]
            assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "gpu_node_selector"
            assert k8s["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "gpu_toleration"
        # every step runs on the component image given as a parameter, with CPU/memory requests
        for task in tasks.values():
            container = _executor(spec, task)
            assert container["image"] == IMAGE_PARAM
            assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryRequest"]
        names = [t["taskInfo"]["name"] for t in tasks.values()]
        assert ("stain-normalize" in names) == (modality == "histopathology")
        # the pipeline's parameter defaults are RunSettings()'s: one declaration
        defaults = RunSettings()
        assert inputs["training"]["defaultValue"] == defaults.training()
        assert inputs["bootstrap"]["defaultValue"] == defaults.bootstrap == 2000
        assert inputs["split_seed"]["defaultValue"] == defaults.split_seed
        assert "baselines" in names
        pushes = [t for t in tasks.values() if t["taskInfo"]["name"].startswith(("push ", "challenge "))]
        assert len(pushes) == 12 and all(not t["cachingOptions"].get("enableCache", False) for t in pushes)
        cached = [t for t in tasks.values() if not t["taskInfo"]["name"].startswith(("push ", "challenge "))]
        assert all(t["cachingOptions"]["enableCache"] for t in cached)


def test_extract_reads_the_phi_key_from_a_mounted_secret_file_never_the_environment(compiled, tmp_path):
    """On the cluster the extract step mounts the Secret phi_key_secret (a pipeline parameter,
    default phi-key) as files and its environment names the key's file, which is what
    components.core.phi reads; the key itself is in no step's environment, and no other step
    mounts it. The cross-validation pipeline's extract is wired the same way."""
    from components.core import phi
    from pipelines import definition
    from tests.conftest import PHI_KEY

    cv = definition.compile_cv_to("ultrasound", tmp_path / "cv.yaml", catalog.BACKBONES[0], catalog.STRATEGIES[0], 2)
    for spec, platform in [*compiled.values(), list(yaml.safe_load_all(Path(cv).read_text()))]:
        assert spec["root"]["inputDefinitions"]["parameters"]["phi_key_secret"]["defaultValue"] == "phi-key"
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name, task in _tasks(spec).items():
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            env = {e["name"]: e["value"] for e in _executor(spec, task).get("env", [])}
            assert phi.KEY_ENV not in env
            if name != "extract":
                assert "secretAsVolume" not in k8s.get(label, {}) and phi.KEY_FILE_ENV not in env
                continue
            (mount,) = k8s[label]["secretAsVolume"]
            assert mount["secretNameParameter"] == {"componentInputParameter": "phi_key_secret"}
            assert mount["mountPath"] == definition.PHI_KEY_MOUNT
            assert env[phi.KEY_FILE_ENV] == f"{definition.PHI_KEY_MOUNT}/key"
            # the Secret's file, there, is the key the extract step pseudonymizes with
            (tmp_path / "key").write_bytes(PHI_KEY + b"\n")
            mounted = {phi.KEY_FILE_ENV: env[phi.KEY_FILE_ENV].replace(definition.PHI_KEY_MOUNT, str(tmp_path))}
            assert phi.load_key(environ=mounted) == PHI_KEY


# Two of the three backbones keep the local run to about four minutes on 2 cores; the compile
# test checks all six branches of every pipeline, and the trained-models fixture trains each one.
LOCAL_BACKBONES = ("resnet50", "vgg16")
# one strategy: each task is a Python process with TensorFlow; progressive is trained by the
# trained-models fixture and compiled here, and its pipeline branch differs only in a parameter
LOCAL_STRATEGIES = ("unfrozen",)
# extract, split, stain, validate, baselines; per strategy train, evaluate, export, challenge, push per
# backbone, a gather per backbone and the cohort ensemble
LOCAL_TASKS = 5 + (6 * len(LOCAL_BACKBONES) + 1) * len(LOCAL_STRATEGIES)


@pytest.fixture(scope="module")
def local_run(sample_sources, tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline-run")
    args = ["pipelines", "run", "--modality", "histopathology", "--data", str(sample_sources["histopathology"]),
            "--model-repo", str(base / "repo"), "--work-dir", str(base / "work"), "--image-size", "32",
            "--epochs", "2", "--head-epochs", "1", "--batch-size", "32", "--min-f1", "0", "--collapse-sd", "0",
            "--weights", "none",
            "--bootstrap", "100", "--seed", "1", "--backbones", ",".join(LOCAL_BACKBONES),
            "--strategies", ",".join(LOCAL_STRATEGIES)]
    first = run_cli(*args)
    (run_dir,) = [p.parent for p in (base / "work").glob("*/manifest.json")]
    return {"base": base, "args": args, "run_dir": run_dir, "stdout": first.stdout}


def test_local_run_pushes_every_model_as_a_loadable_savedmodel(local_run):
    import tensorflow as tf

    repo = local_run["base"] / "repo"
    expected = sorted(catalog.model_name("histopathology", b, s) for b in LOCAL_BACKBONES for s in LOCAL_STRATEGIES)
    assert layout.models(repo) == expected
    for name in expected:
        loaded = tf.saved_model.load(str(repo / name / "1"))
        assert {"serving_default", "explain"} <= set(loaded.signatures)
    config = configs.read_models_config(repo)
    assert sorted(c.name for c in config.model_config_list.config) == expected
    assert f"[{LOCAL_TASKS}/{LOCAL_TASKS}]" in local_run["stdout"]          # progress: one line per finished task
    assert "[epoch] histopathology-vgg16-unfrozen 2/2" in local_run["stdout"]   # and per training epoch


def test_manifest_records_data_code_splits_metrics_and_pushes(local_run):
    manifest = json.loads((local_run["run_dir"] / "manifest.json").read_text())
    assert manifest["pipeline"]["name"] == "bcimaging-histopathology"
    assert manifest["parameters"]["training"]["image_size"] == 32 and manifest["code"]["sources_sha256"]
    assert manifest["input_data"]["records_written"] == 60
    (source,) = manifest["input_data"]["sources"]
    assert source["records_written"] == 60 and len(source["sha256"]) == 64 and source["name"] == "histopathology"
    assert sum(s["records"] for s in manifest["splits"]["counts"].values()) == 60
    assert len(manifest["splits"]["manifest_sha256"]) == 64
    assert len(manifest["metrics"]) == len(LOCAL_BACKBONES) * len(LOCAL_STRATEGIES)
    assert sorted(manifest["ensembles"]) == [f"histopathology-ensemble-{s}" for s in sorted(LOCAL_STRATEGIES)]
    assert sorted(manifest["baselines"]) == ["histopathology-baseline-histogram", "histopathology-baseline-majority"]
    for m in manifest["metrics"].values():
        auc = m["metrics"]["roc_auc"]
        assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert [(p["model"], p["version"]) for p in manifest["pushed"]] == [(n, 1) for n in sorted(manifest["metrics"])]


def test_audit_passes_then_names_the_one_changed_byte(local_run):
    run_dir = local_run["run_dir"]
    ok = run_cli("pipelines", "audit", str(run_dir))
    assert "audit passed" in ok.stdout
    victim = next(p for p in sorted(run_dir.rglob("variables.data-*")) if "saved_model" in p.parts)
    original = victim.read_bytes()
    victim.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    try:
        bad = run_cli("pipelines", "audit", str(run_dir), check=False)
        assert bad.returncode == 1
        assert victim.relative_to(run_dir).as_posix() in bad.stdout and "modified" in bad.stdout
    finally:
        victim.write_bytes(original)
    assert run_cli("pipelines", "audit", str(run_dir)).returncode == 0
    missing = run_cli("pipelines", "audit", str(local_run["base"]), check=False)
    assert missing.returncode == 2 and "manifest.json not found" in missing.stderr


def test_audit_rehashes_the_pushed_versions_in_the_repository(local_run):
    """Regression: overwriting bytes in a pushed variables file, replacing saved_model.pb
    or deleting the version folder all passed the audit (it trusted the digest file)."""
    run_dir, repo = local_run["run_dir"], local_run["base"] / "repo"
    version = repo / "histopathology-resnet50-unfrozen" / "1"
    variables = next(version.glob("variables/variables.data-*"))
    graph = version / "saved_model.pb"
    for victim, damage in ((variables, lambda b: bytes([b[0] ^ 1]) + b[1:]), (graph, lambda b: b[:-10])):
        original = victim.read_bytes()
        victim.write_bytes(damage(original))
        try:
            bad = run_cli("pipelines", "audit", str(run_dir), check=False)
            assert bad.returncode == 1 and f"{version}: its files differ" in bad.stdout
        finally:
            victim.write_bytes(original)
    moved = version.with_name("moved-away")
    version.rename(moved)
    try:
        gone = run_cli("pipelines", "audit", str(run_dir), check=False)
        assert gone.returncode == 1 and f"{version}: missing from the model repository" in gone.stdout
    finally:
        moved.rename(version)
    assert run_cli("pipelines", "audit", str(run_dir)).returncode == 0


def _main_runs(work: Path) -> list[Path]:
    return sorted(p.parent for p in work.glob("*/manifest.json")
                  if not json.loads(p.read_text())["pipeline"]["name"].endswith("-cv"))


def test_rerun_with_unchanged_inputs_reuses_every_cached_step(local_run):
    again = run_cli(*local_run["args"])
    lines = [l for l in again.stdout.splitlines() if l.strip().startswith("[") and "[epoch]" not in l]
    assert len(lines) == LOCAL_TASKS
    assert "[epoch]" not in again.stdout           # nothing was trained again
    # push and challenge are never cached: their answers depend on the repository as it is now
    assert all("(cached)" in l for l in lines if " push " not in l and " challenge " not in l)
    runs = _main_runs(local_run["base"] / "work")
    assert len(runs) == 2
    first, second = (json.loads((r / "manifest.json").read_text()) for r in runs)
    assert first["metrics"] == second["metrics"]
    assert all(p["version"] == 1 and not p["pushed"] for p in second["pushed"])   # identical exports: no new version
    assert run_cli("pipelines", "audit", str(runs[1])).returncode == 0


def test_report_compares_backbones_and_strategies(local_run, tmp_path):
    run_cli("pipelines", "report", "--work-dir", str(local_run["base"] / "work"), "--out", str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "histopathology: unfrozen models, cohort ensemble and baselines" in md
    assert "cohort ensemble (mean of the three)" in md and "ensemble-unfrozen vs" in md
    assert "baseline: histogram" in md and "baseline: majority" in md
    assert "p (Holm)" in md and "resnet50-unfrozen vs vgg16-unfrozen" in md and "Best configuration per modality" in md
    assert "per-patient results" in md
    # p-values only where the test split has enough patients for a paired cluster bootstrap to test anything
    clusters = max(json.loads(m.read_text())["clusters"]
                   for m in (local_run["base"] / "work").glob("*/*/evaluate*/evaluation/metrics.json"))
    caption = next(l for l in md.splitlines() if l.startswith("## histopathology: paired comparisons"))
    assert ("no p-value is given" in caption) == (clusters < report.FEW_PATIENTS), (caption, clusters)
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "forest_plot.png").stat().st_size > 5000
    empty = run_cli("pipelines", "report", "--work-dir", str(tmp_path / "nothing"), check=False)
    assert empty.returncode == 2 and "no finished run" in empty.stderr


@pytest.fixture(scope="module")
def cv_run(local_run):
    """2-fold patient-level cross-validation of one configuration, in the local run's work dir
    (its extract step comes from the cache): two folds test the plumbing as well as five."""
    args = ["pipelines", "cv", "--modality", "histopathology", "--data", local_run["args"][local_run["args"].index("--data") + 1],
            "--work-dir", str(local_run["base"] / "work"), "--folds", "2", "--backbones", "vgg16",
            "--strategies", "unfrozen", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--min-f1", "0",
            "--collapse-sd", "0", "--weights", "none", "--bootstrap", "100", "--seed", "1"]
    out = run_cli(*args)
    (run_dir,) = [p.parent for p in (local_run["base"] / "work").glob("histopathology-cv-*/manifest.json")]
    return {"run_dir": run_dir, "stdout": out.stdout}


def test_cross_validation_tests_every_patient_exactly_once_out_of_fold(cv_run, local_run, tmp_path):
    import csv

    from components.data import records, schema

    run_dir = cv_run["run_dir"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["pipeline"]["name"] == "bcimaging-histopathology-cv" and not manifest["pushed"]
    (name, oof), = manifest["out_of_fold"].items()
    assert name == "histopathology-vgg16-unfrozen (out-of-fold)" and len(oof["folds"]) == 2
    (folds_dir,) = [p for p in run_dir.glob("*/folds/folds") if p.is_dir()]
    summary = json.loads((folds_dir / "folds.json").read_text())
    tested = [q for t in summary["tested"] for q in t["patients"]]
    assert len(tested) == len(set(tested)) == summary["patients"] == 6            # no patient in two folds
    for i in range(len(summary["tested"])):
        fold = {s: {schema.deserialize(r).patient_id for r in records.read_records(folds_dir / f"fold-{i}" / s)}
                for s in ("train", "validation", "test")}
        assert not (fold["train"] & fold["test"] or fold["validation"] & fold["test"] or fold["train"] & fold["validation"])
        assert fold["test"] == set(summary["tested"][i]["patients"])
    (pooled,) = [p.parent for p in run_dir.rglob("evaluation/metrics.json") if "collected" not in p.parts
                 and "folds" in json.loads(p.read_text())]
    rows = list(csv.DictReader((pooled / "predictions.csv").open()))
    examples = [schema.deserialize(r) for r in records.read_records(next(run_dir.glob("*/extract/examples")))]
    assert sorted(r["source_id"] for r in rows) == sorted(e.source_id for e in examples)   # every record once
    assert {r["patient_id"] for r in rows} == set(tested)
    metrics = json.loads((pooled / "metrics.json").read_text())
    assert metrics["records"] == 60 and metrics["clusters"] == 6 and len(metrics["per_patient"]) == 6
    run_cli("pipelines", "report", "--work-dir", str(local_run["base"] / "work"), "--out", str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "2-fold patient-level cross-validation of histopathology-vgg16-unfrozen" in md
    assert "per-patient out-of-fold results" in md


def test_bad_run_and_submit_arguments_get_clear_errors(tmp_path):
    missing = run_cli("pipelines", "run", "--modality", "ultrasound", "--data", str(tmp_path / "absent"),
                      "--model-repo", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    wrong = run_cli("pipelines", "run", "--modality", "ultrasound", "--data", str(tmp_path), "--model-repo", "r",
                    "--work-dir", "w", "--backbones", "resnet50,alexnet", check=False)
    assert wrong.returncode == 2 and "alexnet" in wrong.stderr
    relative = run_cli("pipelines", "submit", "--host", "http://127.0.0.1:9", "--modality", "ultrasound",
                       "--data", "busi", check=False)
    assert relative.returncode == 2 and "absolute path" in relative.stderr
    refused = run_cli("pipelines", "submit", "--host", "http://127.0.0.1:9", "--modality", "ultrasound",
                      "--data", "/data/busi", check=False)
    assert refused.returncode == 2 and "could not submit to http://127.0.0.1:9" in refused.stderr


def test_failed_step_says_which_and_leaves_no_manifest(tmp_path):
    data = tmp_path / "data" / "benign"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"not an image")
    proc = run_cli("pipelines", "run", "--modality", "ultrasound", "--data", str(tmp_path / "data"),
                   "--model-repo", str(tmp_path / "repo"), "--work-dir", str(tmp_path / "work"), check=False)
    assert proc.returncode == 2 and "extract" in proc.stderr and "run.log" in proc.stderr
    assert not list((tmp_path / "work").glob("*/manifest.json"))
    assert not (tmp_path / "repo").exists()
    shutil.rmtree(tmp_path / "work")


def test_study_profiles_name_every_training_parameter_and_check_the_data_root(tmp_path):
    for profile in ("cpu", "gpu"):
        for modality in catalog.MODALITIES:
            settings = study.settings(profile, modality)
            assert settings.profile == profile and settings.weights == "none"
            assert {"image_size", "epochs", "batch_size", "learning_rate", "augmentation"} <= set(
                study.PROFILES[profile][modality])
    assert study.settings("gpu", "ultrasound").image_size == 224 and study.settings("gpu", "ultrasound").epochs == 40
    models, extra = study.expected_minutes("cpu", list(catalog.MODALITIES), 3, side_by_side=True)
    assert models <= 120 and extra <= 60
    missing = run_cli("pipelines", "study", "--data", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                      "--model-repo", str(tmp_path / "r"), "--profile", "cpu", check=False)
    assert missing.returncode == 2 and all(f in missing.stderr for f in ("busi", "busbra", "ddsm", "idc"))


def test_the_step_cache_key_covers_the_installed_dependency_lock():
    """Every pin of requirements.txt that is installed is part of the key; another version of
    any one of them gives another key (a result is never reused across a dependency change)."""
    from pipelines import cache
    from tests.conftest import ROOT

    lines = set(cache.environment_lines())
    pins = [line.split(";")[0].strip().lower().replace("_", "-") for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    pins = [p.split("[")[0] if "[" in p.split("==")[0] else p for p in pins]
    assert "tensorflow==2.16.2" in lines and "keras==3.6.0" in lines
    assert sum(p in lines for p in pins) >= 0.9 * len(pins)      # the lock, as installed
    same = cache.fingerprint("train")
    changed = {**same, "environment": cache.hashlib.sha256(b"keras==3.6.1").hexdigest()}
    args = ("train", {"epochs": 1}, {})
    assert cache.step_key(*args, same) == cache.step_key(*args) != cache.step_key(*args, changed)


def test_settings_travel_to_another_process_as_options_unchanged():
    """The study starts its seed replicates as `pipelines run` processes: the options made from
    a profile's settings parse back to the same settings."""
    from components.core import cli
    from pipelines.__main__ import build_parser, settings_from

    given = study.settings("cpu", "histopathology", seed=2, backbones=["vgg16"], strategies=["progressive"])
    args = build_parser().parse_args(["run", "--modality", "histopathology", "--data", "d", "--model-repo", "r",
                                      "--work-dir", "w", "--run-id", "x", *cli.to_options(given)])
    assert settings_from(args) == given and args.run_id == "x"
