"""Operating the models: labels that follow recorded decisions, champion and challenger,
operators' promote and rollback, canary traffic through the gateway, drift of served inputs."""
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from components import challenge
from components.evaluation import scoring
from components.evaluation import predictions
from components.data import records, schema
from gateway.app import create_app
from serving import configs, history, layout, repository
from serving.server import Server
from tests.conftest import export_variant, gateway_config, live_gateway, run_cli, signed_in

NAME = "ultrasound-resnet50-unfrozen"
BLESSED = {"blessed": True, "reason": "blessed in a test"}


def _variant(pipeline_outputs, tmp_path, note: str, damage=None) -> Path:
    return export_variant(pipeline_outputs[NAME] / "saved_model", tmp_path / "exports" / note, note, damage)


def _corrupt_variables(export_dir: Path) -> None:
    variables = next(export_dir.glob("variables/variables.data-*"))
    variables.write_bytes(variables.read_bytes()[: len(variables.read_bytes()) // 3])


def test_stable_never_points_at_a_broken_version(pipeline_outputs, tmp_path):
    """Found in the load test: after version 4 was pushed, `stable` named the broken version 3
    ("the version before the newest"), and every request for stable failed. Labels now follow
    the recorded decisions: the broken export is refused before it is published, and a version
    folder that appears without a decision never holds a label."""
    root = tmp_path / "repo"
    assert repository.push(_variant(pipeline_outputs, tmp_path, "v1"), root).reason.endswith("stable (the model's first)")
    assert "canary" in repository.push(_variant(pipeline_outputs, tmp_path, "v2"), root, canary=BLESSED).reason
    broken = repository.push(_variant(pipeline_outputs, tmp_path, "v3-broken", _corrupt_variables), root, canary=BLESSED)
    assert not broken.pushed and "does not load and warm up" in broken.reason
    fourth = repository.push(_variant(pipeline_outputs, tmp_path, "v4"), root, canary=BLESSED)
    assert fourth.pushed and fourth.version == 3                       # the refused export took no number
    shutil.copytree(_variant(pipeline_outputs, tmp_path, "dropped-in", _corrupt_variables), root / NAME / "9")
    configs.write_configs(root)
    labels = layout.labels(root, NAME)
    assert labels == {"stable": 1, "canary": 3}
    config = configs.read_models_config(root).model_config_list.config[0]
    assert dict(config.version_labels) == labels and 9 not in config.model_version_policy.specific.versions
    actions = [(r["action"], r["to"]) for r in history.read(root, NAME)]
    assert actions == [("verified", 1), ("stable", 1), ("verified", 2), ("canary", 2), ("refused", None),
                       ("verified", 3), ("canary", 3)]
    with pytest.raises(ValueError, match="never verified"):
        repository.promote(root, NAME, 9, reason="an operator's mistake")


def _candidate(tmp_path, name: str, test_dir: Path, validation_dir: Path, scores) -> Path:
    """An evaluation folder whose test probabilities are ``scores(labels)`` on the real records."""
    def scored(split_dir, prefix):
        recs = [schema.deserialize(r) for r in records.read_records(split_dir)]
        y = np.array([r.label for r in recs])
        return predictions.Scored(y, scores(y), [r.source_id for r in recs], [r.patient_id for r in recs],
                               [r.source for r in recs])

    out = tmp_path / name
    scoring.report(NAME, "ultrasound", scored(validation_dir, "v"), scored(test_dir, "t"), test_dir, validation_dir,
                    out, min_f1=0.0, bootstrap=300)
    return out


def _every_record(splits: Path, out: Path) -> Path:
    """One folder with the shards of all three splits (and their patients.csv beside it)."""
    (out / "records").mkdir(parents=True)
    shutil.copy(splits / "patients.csv", out / "patients.csv")
    for split in ("train", "validation", "test"):
        for shard in records.tfrecord_files(splits / split):
            shutil.copy(shard, out / "records" / f"{split}-{shard.name}")
    return out / "records"


def test_a_worse_candidate_is_refused_for_canary_and_a_better_one_is_labelled(pipeline_outputs, sample_splits, tmp_path):
    """The stable version is scored on the candidate's own test records through its serving
    signature; a candidate whose AUC difference has its lower bound below -margin is refused
    with the difference and its interval in the blessing, a better one takes the canary."""
    from pipelines import steps

    root = tmp_path / "repo"
    repository.push(_variant(pipeline_outputs, tmp_path, "champion"), root)
    splits = sample_splits["ultrasound"]
    held_out = _every_record(splits, tmp_path / "pooled")   # the sample's 9 test records give no verdict
    rng = np.random.default_rng(0)
    worse = _candidate(tmp_path, "worse", held_out, splits / "validation",
                       lambda y: np.clip(0.6 - 0.3 * y + rng.normal(0, 0.05, len(y)), 0.01, 0.99))
    better = _candidate(tmp_path, "better", held_out, splits / "validation",
                        lambda y: np.clip(0.2 + 0.6 * y + rng.normal(0, 0.05, len(y)), 0.01, 0.99))
    verdicts = {}
    for name, evaluation in (("worse", worse), ("better", better)):
        out = tmp_path / f"challenge-{name}"
        verdicts[name] = challenge.run(evaluation, held_out, layout.stable_version(root, NAME), out, margin=0.02,
                                         bootstrap=300)
        record = SimpleNamespace(path=str(tmp_path / f"push-{name}.md"), metadata={})
        steps.push(str(root), 3, SimpleNamespace(path=str(_variant(pipeline_outputs, tmp_path, name))),
                   SimpleNamespace(path=str(evaluation)), SimpleNamespace(path=str(out)), record)
        verdicts[name]["push"] = record.metadata
    worse_v, better_v = verdicts["worse"], verdicts["better"]
    assert not worse_v["blessed"] and worse_v["baseline_version"] == 1
    c = worse_v["comparison"]
    assert c["ci_low"] <= c["difference"] <= c["ci_high"] < 0 and "difference" in worse_v["reason"]
    assert json.loads((tmp_path / "challenge-worse" / "blessing.json").read_text())["comparison"]["ci_low"] == c["ci_low"]
    assert not worse_v["push"]["pushed"] and worse_v["push"]["reason"].startswith("not blessed")
    assert better_v["blessed"] and better_v["comparison"]["ci_low"] > -0.02, better_v["reason"]
    assert better_v["push"]["pushed"] and layout.labels(root, NAME) == {"stable": 1, "canary": 2}
    canary = [r for r in history.read(root, NAME) if r["action"] == "canary"]
    assert canary[-1]["evidence"]["comparison"]["difference"] == better_v["comparison"]["difference"]
    # the first model of a name has no champion: the absolute rule alone
    first = challenge.run(better, held_out, layout.stable_version(tmp_path / "empty-repo", NAME), tmp_path / "first",
                          bootstrap=100)
    assert first["blessed"] and first["baseline_version"] is None and "first model" in first["reason"]


def test_rollback_restores_the_last_stable_version_and_the_history_records_it(pipeline_outputs, tmp_path):
    root = tmp_path / "repo"
    run_cli("serving", "push", "--export", str(_variant(pipeline_outputs, tmp_path, "v1")), "--model-repo", str(root))
    run_cli("serving", "push", "--export", str(_variant(pipeline_outputs, tmp_path, "v2")), "--model-repo", str(root),
            "--canary", "--reason", "retrained on the new data")
    promoted = run_cli("serving", "promote", NAME, "2", "--model-repo", str(root), "--reason", "canary held for a week")
    assert "stable 1 -> 2" in promoted.stdout and layout.labels(root, NAME) == {"stable": 2}
    back = run_cli("serving", "rollback", NAME, "--model-repo", str(root), "--reason", "sensitivity fell at site B")
    assert "stable is 1" in back.stdout and layout.labels(root, NAME) == {"stable": 1}
    last = history.read(root, NAME)[-1]
    assert (last["action"], last["label"], last["from"], last["to"]) == ("rollback", "stable", 2, 1)
    assert last["reason"] == "sensitivity fell at site B" and last["user"] and last["time"]
    shown = run_cli("serving", "labels", NAME, "--model-repo", str(root)).stdout
    assert shown.startswith(f"{NAME}: stable 1, canary -") and "rollback stable 2 -> 1: sensitivity fell" in shown
    # a canary is rolled back by taking its label away; nothing to roll back to is a clear error
    run_cli("serving", "push", "--export", str(_variant(pipeline_outputs, tmp_path, "v3")), "--model-repo", str(root),
            "--canary")
    run_cli("serving", "rollback", NAME, "--model-repo", str(root), "--reason", "canary errors")
    assert layout.labels(root, NAME) == {"stable": 1}
    nothing = run_cli("serving", "rollback", NAME, "--model-repo", str(root), "--reason", "again", check=False)
    assert nothing.returncode == 2 and "no earlier stable version" in nothing.stderr
    lines = (root / NAME / history.HISTORY).read_text().splitlines()
    assert all(json.loads(line)["model"] == NAME for line in lines)          # one whole record a line


def _png(sample_splits, modality: str, n: int, split: str = "test") -> list[bytes]:
    raw = sample_splits[modality].parent / "splits" / split
    return [schema.deserialize(r).image_png for r in records.read_records(raw)][:n]


def test_canary_gets_its_share_of_traffic_and_every_answer_names_its_version(pipeline_outputs, sample_splits, tmp_path,
                                                                              issuer):
    root = tmp_path / "repo"
    repository.push(_variant(pipeline_outputs, tmp_path, "v1"), root)
    repository.push(_variant(pipeline_outputs, tmp_path, "v2"), root, canary=BLESSED)
    server = Server(root, port=0, poll_seconds=0.5)
    try:
        app = create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}", deadline_s=20, canary_percent=30,
                                        canary_seed=1, repository_refresh_s=0))
        client = signed_in(app.test_client(), issuer, ("clinician", "operator"))
        png = _png(sample_splits, "ultrasound", 1)[0]

        def ask(n):
            answers = [client.post(f"/api/v1/models/{NAME}:predict",
                                   data={"image": (io.BytesIO(png), "a.png")}, content_type="multipart/form-data")
                       for _ in range(n)]
            assert all(a.status_code == 200 for a in answers)
            return [(a.json["version"], a.json["version_label"]) for a in answers]

        seen = ask(60)
        canary = sum(1 for v in seen if v == (2, "canary"))
        assert set(seen) == {(1, "stable"), (2, "canary")} and 8 <= canary <= 30
        metrics = client.get("/metrics").data.decode()
        assert (f'gateway_version_requests_total{{label="canary",model="{NAME}",outcome="ok",version="2"}} '
                f'{float(canary)}') in metrics
        assert f'gateway_version_seconds_count{{model="{NAME}",version="1"}}' in metrics
        repository.rollback(root, NAME, reason="the test rolls the canary back")
        server.store.refresh()
        assert set(ask(20)) == {(1, "stable")}
    finally:
        server.stop()


def test_drift_report_sounds_the_alarm_for_images_of_another_modality(pipeline_outputs, sample_splits, tmp_path,
                                                                       issuer):
    """Histopathology tiles (RGB, 50 px) sent to an ultrasound model: the served statistics are
    far from the training split's, and the drift command names the features."""
    import base64
    import urllib.request

    token = tmp_path / "operator.token"
    token.write_text(issuer.token("drift-job", ("operator",)))
    with live_gateway(pipeline_outputs, tmp_path / "repo", issuer) as (_, address):
        tiles = _png(sample_splits, "histopathology", 40, "train")
        for tile in tiles:
            body = json.dumps({"image": {"b64": base64.b64encode(tile).decode()}}).encode()
            req = urllib.request.Request(f"http://{address}/api/v1/models/{NAME}:predict", data=body,
                                         headers={"Content-Type": "application/json", **issuer.headers()})
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200
        out = run_cli("pipelines", "drift", "--model-repo", str(tmp_path / "repo"), "--work-dir", str(tmp_path / "w"),
                      "--gateway", f"http://{address}", "--min-count", "30", "--bearer-token-file", str(token))
    line = next(l for l in out.stdout.splitlines() if l.startswith(f"{NAME} v1"))
    assert "DRIFT in" in line and "channels" in line and "pixels" in line
    (report,) = (tmp_path / "w").glob("drift-*/report.md")
    text = report.read_text()
    assert "**drift in" in text and (report.parent / f"{NAME}-v1-mean.png").stat().st_size > 2000
    assert "<img" in (report.parent / "report.html").read_text()


def test_label_commands_refuse_a_model_name_with_a_path_in_it(tmp_path):
    """promote, rollback and labels name a model folder: a name with ``../`` is refused with
    what a name must look like, before any file is opened, and nothing appears beside the
    repository."""
    root = tmp_path / "area" / "repo"
    root.mkdir(parents=True)
    for args in (["promote", "../../outside", "1", "--reason", "attack"], ["rollback", "../outside", "--reason", "attack"],
                 ["labels", "../../outside"]):
        done = run_cli("serving", *args, "--model-repo", str(root), check=False)
        assert done.returncode == 2, done.stderr
        assert "is not <modality>-<backbone>-<strategy>" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["area", "repo"]
