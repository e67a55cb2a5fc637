"""Shared fixtures: sample datasets made once per session, the real datasets when present."""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.core import catalog
from components import ensemble, export, extract, sample_data, split, stain, train

ROOT = Path(__file__).resolve().parents[1]
PHI_KEY = b"a-test-phi-key-of-32-random-bytes"
SHARED = ROOT.parent / "shared" / "datasets"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))


# Test modules that share an expensive session fixture run on one xdist worker: the local
# pipeline run (about 180 s) is built once that way. pytest-xdist's own "loadgroup" marks do not
# take effect under pytest 9 (the nodeid suffix they rely on is not used), so the scheduler is
# given the groups. The trained models (pipeline_outputs, about 170 s) are built once per session
# whichever worker asks first (a file lock in the session's shared folder), so their tests can be
# spread: the first group on one worker, operations and serving after the pipeline tests on the
# other, once the models are built (LATE modules are collected last).
WORKER_GROUPS = {**{m: "trained-models" for m in ("test_api_fuzz", "test_gateway", "test_gateway_process",
                                                   "test_gateway_v2", "test_gateway_dicom", "test_dicom_node",
                                                   "test_pages_browser", "test_train_evaluate_export", "test_wheel",
                                                   "test_identity")},
                 **{m: "pipeline-run" for m in ("test_pipelines", "test_operations", "test_serving")}}
LATE = ("test_operations", "test_serving")
# tests of a grouped module that use none of its shared fixtures: free to run on either worker
UNGROUPED = {"test_train_evaluate_export.py::test_training_twice_gives_the_same_weights"}


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: _module(item.nodeid) in LATE)       # stable: otherwise as collected


def pytest_xdist_make_scheduler(config, log):
    """xdist's load-by-scope scheduling with scopes from WORKER_GROUPS; every other test is a
    scope of its own, spread over the workers as they come free."""
    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rsplit("/", 1)[-1].split("[", 1)[0] in UNGROUPED:
                return nodeid
            return WORKER_GROUPS.get(_module(nodeid), nodeid)

    return Grouped(config, log)


def needs_shared_datasets():
    return pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not present at {SHARED}")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the repository root, as a user would."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("samples")
    return {m: sample_data.run(m, base / m, count=60, seed=1) for m in ("mammography", "ultrasound", "histopathology")}


@pytest.fixture(scope="session")
def sample_splits(request, tmp_path_factory) -> dict[str, Path]:
    """Training-ready splits per modality, as a pipeline makes them: histopathology's are
    stain-normalized (``splits-stained``); the raw splits stay beside them (``splits``).
    Built once per session (see once_per_session)."""
    modalities = ("mammography", "ultrasound", "histopathology")
    with once_per_session(tmp_path_factory, "sample-splits") as (base, built):
        out = {m: base / m / ("splits-stained" if m == "histopathology" else "splits") for m in modalities}
        if built:
            return out
        sources = request.getfixturevalue("sample_sources")
        for modality in modalities:
            extract.run(modality, sources[modality], base / modality / "examples")
            split.run(base / modality / "examples", base / modality / "splits", seed=1)
            if modality == "histopathology":
                stain.run(base / modality / "splits", out[modality])
        return out


@pytest.fixture(scope="session")
def real_idc_examples(tmp_path_factory) -> Path:
    """The 16 IDC patients of ``../shared/datasets/idc`` (9,984 tiles) extracted once per session
    (about 25 s): the split test and the end-to-end data test both read them."""
    with once_per_session(tmp_path_factory, "real-idc-examples") as (base, built):
        if not built:
            extract.run("histopathology", SHARED / "idc", base)
        return base


# (backbone, strategy) -> modality: the unfrozen cohort on one modality (so it can be compared
# pairwise), progressive spread over the others so each modality's graph is exported once.
COMBOS = {("resnet50", "unfrozen"): "ultrasound", ("vgg16", "unfrozen"): "ultrasound",
          ("densenet121", "unfrozen"): "ultrasound", ("resnet50", "progressive"): "mammography",
          ("vgg16", "progressive"): "histopathology", ("densenet121", "progressive"): "histopathology"}


@contextlib.contextmanager
def once_per_session(tmp_path_factory, name: str):
    """(folder, built): a folder every xdist worker of this test run shares, under a lock, so the
    first to ask builds it (and marks it built) while the others wait, then reuse it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder, (folder / ".built").exists()
            (folder / ".built").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def pipeline_outputs(sample_splits, tmp_path_factory):
    """Each backbone x strategy trained 1 epoch at 32 px, evaluated and exported (SavedModel);
    the ultrasound unfrozen cohort with its ensemble (``<base>/ensemble``) in every member's card.
    Built once per session (see once_per_session)."""
    with once_per_session(tmp_path_factory, "trained-models") as (base, built):
        if built:
            return {catalog.model_name(m, b, s): base / catalog.model_name(m, b, s) for (b, s), m in COMBOS.items()}
        return _train_every_combination(sample_splits, base)


def _train_every_combination(sample_splits, base: Path) -> dict[str, Path]:
    """As the pipeline does it: train; evaluate and save the serving graph in one go (one model
    load); the cohort ensemble; then each export's card (``components.export.card``)."""
    import keras

    from pipelines import steps

    base.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for (backbone, strategy), modality in COMBOS.items():
        name = catalog.model_name(modality, backbone, strategy)
        splits = sample_splits[modality]
        # batch 32: two eager steps an epoch, not three (each costs seconds of Python dispatch)
        config = train.TrainConfig(modality=modality, backbone=backbone, strategy=strategy, image_size=32,
                                   epochs=1 if strategy == "unfrozen" else 2, batch_size=32, weights="none", seed=1)
        train.run(splits, base / name / "model", config)
        steps.evaluate_and_save_graph(str(base / name / "model"), str(splits), str(base / name / "eval"),
                                      str(base / name / "graph"), min_f1=0.0, collapse_sd=0.0, bootstrap=200, seed=0)
        outputs[name] = base / name
        keras.backend.clear_session()
    ensemble.run([outputs[n] / "eval" for n in ULTRASOUND_UNFROZEN], base / "ensemble", bootstrap=200, collapse_sd=0.0)
    for name, out in outputs.items():
        export.card(out / "graph", out / "model", out / "eval", out / "saved_model",
                    base / "ensemble" if name in ULTRASOUND_UNFROZEN else None)
    return outputs


def export_variant(export_dir: Path, out: Path, note: str, damage=None) -> Path:
    """A copy of an export with its own card note (so a push makes a new version of it),
    optionally damaged by ``damage(folder)``."""
    import json
    import shutil

    from serving import layout

    shutil.copytree(export_dir, out)
    card = json.loads((out / layout.CARD).read_text())
    (out / layout.CARD).write_text(json.dumps({**card, "note": note}))
    if damage:
        damage(out)
    return out


ULTRASOUND_UNFROZEN = ("ultrasound-resnet50-unfrozen", "ultrasound-vgg16-unfrozen", "ultrasound-densenet121-unfrozen")


@pytest.fixture(scope="session")
def issuer():
    """The OpenID provider the gateways of this test run trust (tests/oidc.py), on loopback."""
    from tests.oidc import Issuer

    with Issuer() as running:
        yield running


def gateway_config(issuer, root: Path, serving: str, audit_log: Path | None = None, **options):
    """A gateway's configuration as a hospital runs it: tokens from ``issuer``, an access audit
    (beside the repository unless given), the PHI key."""
    from components.core.identity import IdentityConfig
    from gateway.app import GatewayConfig

    return GatewayConfig(Path(root), serving, auth=IdentityConfig(issuer.url, issuer.audience),
                         audit_log=audit_log or Path(root).parent / f"{Path(root).name}-audit.jsonl",
                         phi_key=PHI_KEY, **options)


def signed_in(client, issuer, roles=("clinician",), subject: str = "dr-example"):
    """A Flask test client whose every request carries a token with ``roles``."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {issuer.token(subject, roles)}"
    return client


@contextlib.contextmanager
def live_gateway(pipeline_outputs, root: Path, issuer, tls_files=None, **server_options):
    """The ultrasound cohort pushed to ``root``, the model server over gRPC and the gateway on
    waitress (over HTTPS with ``tls_files``), both on loopback, trusting ``issuer``: yields
    (model server, gateway host:port)."""
    import threading

    from gateway.__main__ import server as gateway_server
    from serving import repository
    from serving.server import Server

    for name in ULTRASOUND_UNFROZEN:
        repository.push(pipeline_outputs[name] / "saved_model", root)
    model_server = Server(root, port=0, **server_options)
    _, http = gateway_server(gateway_config(issuer, root, f"127.0.0.1:{model_server.port}", deadline_s=20,
                                            repository_refresh_s=0), "127.0.0.1", 0, tls_files=tls_files)
    threading.Thread(target=http.run, daemon=True).start()
    try:
        yield model_server, f"127.0.0.1:{http.effective_port}"
    finally:
        http.close()
        model_server.stop()
