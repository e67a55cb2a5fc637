"""The demo on built-in sample data: the three modality pipelines at a small image size, all 18
models pushed to one model repository, the cross-modality report, then the embedded model
server and the gateway started, checked with one real compare request, and their URLs printed.

The three pipelines run side by side, one process each: much of a short run is single-threaded
Python (graph tracing, SavedModel export), so on 2 cores three at once finish well before three
in a row.

    python -m pipelines.demo --out DIR [--count N] [--image-size N] [--serve-seconds S]
"""
from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from components.core import catalog, cli
from components import sample_data
from pipelines import local
from serving import layout
from serving.server import free_port


def run_pipelines(out: Path, count: int, image_size: int, seed: int) -> None:
    """One ``python -m pipelines run`` per modality, side by side, their progress lines prefixed."""
    commands = {}
    for modality in catalog.MODALITIES:
        data = sample_data.run(modality, out / "data" / modality, count=count, seed=seed)
        commands[modality] = [
            sys.executable, "-m", "pipelines", "run", "--modality", modality, "--data", str(data),
            "--model-repo", str(out / "model-repository"), "--work-dir", str(out / "work"),
            "--image-size", str(image_size), "--epochs", "1", "--head-epochs", "1", "--batch-size", "32",
            "--weights", "none", "--min-f1", "0", "--collapse-sd", "0", "--bootstrap", "200", "--seed", str(seed)]
    failed = local.side_by_side(commands, echo=lambda line: print(line, flush=True))
    if failed:
        raise cli.UserError(f"the {', '.join(failed)} pipeline failed; its run.log under {out / 'work'} says why")


def serve(out: Path, seconds: float) -> None:
    """Start the embedded model server and the gateway, ask one cohort, print the URLs."""
    repo = out / "model-repository"
    grpc_port, http_port = free_port(), free_port()
    logs = {name: open(out / f"{name}.log", "w") for name in ("model-server", "gateway")}
    server = subprocess.Popen([sys.executable, "-m", "serving", "serve", "--model-repo", str(repo),
                               "--port", str(grpc_port)], stdout=logs["model-server"], stderr=subprocess.STDOUT)
    # a demo on this machine: no identity provider, loopback only (the gateway says so loudly)
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--model-repo", str(repo),
                                "--serving", f"127.0.0.1:{grpc_port}", "--port", str(http_port), "--auth", "none"],
                               stdout=logs["gateway"], stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    print(f"starting the model server and the gateway (logs: {out / 'model-server.log'}, {out / 'gateway.log'})",
          flush=True)
    try:
        _wait_ready(url, timeout=180)
        image = next((out / "data" / "ultrasound").rglob("*.png"))
        body = json.dumps({"image": {"b64": base64.b64encode(image.read_bytes()).decode()}}).encode()
        request = urllib.request.Request(f"{url}/api/v1/cohorts/ultrasound/unfrozen:compare", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        print(f"compare check ({image.name}): " + ", ".join(
            f"{m['model']} v{m['version']}: {m['label_name']} ({m['probability']:.3f})" for m in answer["models"]))
        print(f"\ngateway:      {url}/   (JSON API {url}/api/v1/models, OpenAPI {url}/api/v1/openapi.json)\n"
              f"model server: 127.0.0.1:{grpc_port} (TensorFlow Serving gRPC API)\n"
              f"report:       {out / 'work' / 'report.html'}", flush=True)
        if seconds > 0:
            time.sleep(seconds)
        else:
            print("serving until Ctrl-C", flush=True)
            gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (gateway, server):
            proc.terminate()
            proc.wait(timeout=30)
        for log in logs.values():
            log.close()


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/readyz", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise cli.UserError(f"the gateway at {url} was not ready after {timeout:.0f} s; see model-server.log and "
                        "gateway.log in the demo folder")


def run(out: str | Path, count: int = sample_data.DEFAULT_COUNT, image_size: int = 32, seed: int = 0,
        serve_seconds: float = 0) -> None:
    from pipelines.study import report

    out = Path(out).resolve()
    started = time.perf_counter()
    print(f"== 3 pipelines x 6 models on sample data ({count} images each, {image_size} px); runs in {out / 'work'}",
          flush=True)
    run_pipelines(out, count, image_size, seed)
    models = layout.models(out / "model-repository")
    paths = report.run(out / "work")
    print(f"\n{len(models)} models in {out / 'model-repository'} after {time.perf_counter() - started:.0f} s; "
          f"report: {paths[1]}", flush=True)
    if len(models) != len(catalog.MODALITIES) * len(catalog.BACKBONES) * len(catalog.STRATEGIES):
        raise cli.UserError(f"expected 18 models, the repository holds {len(models)}: {models}")
    serve(out, serve_seconds)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo-output")
    ap.add_argument("--count", type=int, default=sample_data.DEFAULT_COUNT, help="sample images per modality")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve-seconds", type=float, default=0, help="stop serving after this long (0: until Ctrl-C)")
    return ap


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), lambda a, _: run(a.out, a.count, a.image_size, a.seed, a.serve_seconds)))
