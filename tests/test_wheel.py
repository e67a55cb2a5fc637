"""The wheel as an image installs it: built from a copy of the source tree, installed by pip into a
fresh virtual environment, its package data present, nothing but the product's five packages in
site-packages, and the gateway started from the installed copy answering its pages and a compare."""
import base64
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from components.data import records, schema
from serving import repository
from serving.server import Server, free_port
from tests.conftest import PHI_KEY, ROOT, ULTRASOUND_UNFROZEN

PACKAGES = {"components", "pipelines", "serving", "gateway", "dicom_node"}
# Left out of the source copy: environments, build outputs and caches. The wheel is built from a
# copy, not in place, because setuptools keeps build/lib between builds, and a module since moved
# or deleted would still ship from there (and the build would write into the checkout).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*cache*",
                                    "test-artifacts", "*-output", ".schemathesis")


def _run(*command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, \
        f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def _get(url: str, data: bytes | None = None, timeout: float = 30.0, token: str | None = None):
    headers = {**({"Content-Type": "application/json"} if data is not None else {}),
               **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_the_installed_wheel_serves_the_gateway(pipeline_outputs, sample_splits, tmp_path, issuer):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    # the wheel, and what it carries
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source,
         env=env)
    (wheel,) = (tmp_path / "dist").glob("bcimaging-0.1.0-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/", 1)[0] for n in names} == PACKAGES | {"bcimaging-0.1.0.dist-info"}
    data = {f"gateway/templates/{p.name}" for p in (source / "gateway" / "templates").glob("*.html")} \
        | {f"gateway/static/{p.name}" for p in (source / "gateway" / "static").iterdir() if p.is_file()} \
        | {"serving/tensorflow_serving.binpb", "pipelines/study/timings.json"}
    assert {"gateway/templates/home.html", "gateway/static/style.css"} <= data
    assert not data - names, sorted(data - names)
    modules = {p.relative_to(source).as_posix() for package in PACKAGES for p in (source / package).rglob("*.py")}
    assert not modules - names, f"left out of the wheel (a folder without __init__.py?): {sorted(modules - names)}"

    # a fresh environment: the wheel by pip; the locked dependencies seen through a .pth naming
    # this environment's site-packages (a .pth inside a folder added that way is not read, so the
    # editable install of the checkout there stays out)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, env=env)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel, env=env)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=env).stdout.strip())
    locked = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "locked-dependencies.pth").write_text("".join(f"{p}\n" for p in locked))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(python, "-c", "import json, components, dicom_node, gateway, pipelines, serving; print(json.dumps("
                 "{m.__name__: m.__file__ for m in (components, dicom_node, gateway, pipelines, serving)}))",
                 cwd=elsewhere, env=env)
    files = json.loads(where.stdout)
    assert set(files) == PACKAGES and all(Path(f).is_relative_to(site) for f in files.values()), files
    assert (site / "pipelines" / "study" / "timings.json").is_file()

    # the gateway from the installed copy, against the embedded model server (this environment's
    # TensorFlow), with the ultrasound cohort pushed
    root = tmp_path / "repo"
    for name in ULTRASOUND_UNFROZEN:
        repository.push(pipeline_outputs[name] / "saved_model", root)
    model_server = Server(root, port=0)
    port = free_port()
    log = tmp_path / "gateway.log"
    with open(log, "w") as out:
        gateway = subprocess.Popen([str(python), "-m", "gateway", "--model-repo", str(root), "--serving",
                                    f"127.0.0.1:{model_server.port}", "--port", str(port), "--deadline", "20",
                                    "--oidc-issuer", issuer.url, "--oidc-audience", issuer.audience,
                                    "--audit-log", str(tmp_path / "audit.jsonl")],
                                   cwd=elsewhere, env={**env, "BCIMAGING_PHI_KEY": PHI_KEY.decode()}, stdout=out,
                                   stderr=subprocess.STDOUT)
    token = issuer.token()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while gateway.poll() is None and time.monotonic() < deadline:
            try:
                if _get(f"{url}/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert gateway.poll() is None and _get(f"{url}/readyz")[0] == 200, log.read_text()[-3000:]

        assert _get(f"{url}/")[0] == 401
        status, kind, body = _get(f"{url}/", token=token)
        assert status == 200 and kind.startswith("text/html"), (status, body[:500])
        assert b"Breast-cancer image classification" in body and b"/cohorts/ultrasound/unfrozen" in body
        status, kind, body = _get(f"{url}/cohorts/ultrasound/unfrozen", token=token)
        assert status == 200 and kind.startswith("text/html"), (status, body[:500])
        status, kind, _ = _get(f"{url}/static/style.css", token=token)
        assert status == 200 and kind.startswith("text/css")

        raw = sample_splits["ultrasound"].parent / "splits" / "test"
        png = schema.deserialize(next(records.read_records(raw))).image_png
        request = json.dumps({"image": {"b64": base64.b64encode(png).decode()}}).encode()
        status, kind, body = _get(f"{url}/api/v1/cohorts/ultrasound/unfrozen:compare", data=request, timeout=60,
                                  token=token)
        assert status == 200, body[:2000]
        assert [m["model"] for m in json.loads(body)["models"]] == list(ULTRASOUND_UNFROZEN)
    finally:
        gateway.kill()
        gateway.wait(timeout=30)
        model_server.stop()
