"""Gateway latency and throughput at 224 px, measured side by side in one run:

- direct: an in-process call of the SavedModel's serving signature on one PNG (the floor);
- single: the same image through gunicorn -> gateway -> gRPC -> model server (separate
  processes, as deployed), per backbone; overhead = gateway p50 / direct p50 - 1 (target <= 10 %);
- compare: a cohort's three backbones through the gateway, against the slowest backbone's
  single p50 (target <= 1.25x; the report's sequential compare costs the sum);
- throughput with 1, 4 and 16 concurrent clients, server batching on and off, against the
  model's own batch-16 throughput in-process (target at 16 clients >= 0.8x).

Untrained weights: latency does not depend on what the weights are.

    python -m bench.gateway [--requests 30] [--image-size 224]
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
MODALITY, STRATEGY = "ultrasound", "unfrozen"


def export_untrained(backbone: str, size: int, out: Path) -> None:
    import tensorflow as tf

    from components import catalog, export, models
    from components.atomic import write_json

    model = models.build(backbone, size, None)
    module = export.serving_module(model, MODALITY, size, 0.5, models.BACKBONES[backbone].last_conv)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve, "explain": module.explain})
    name = catalog.model_name(MODALITY, backbone, STRATEGY)
    (out / "assets.extra").mkdir(exist_ok=True)
    nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    write_json(out / "assets.extra" / "model_card.json", {
        "model_name": name, "modality": MODALITY, "backbone": backbone, "strategy": STRATEGY,
        "label_names": list(catalog.modality(MODALITY).label_names), "threshold": 0.5, "image_size": size,
        "test_metrics": {m: nan for m in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")},
        "note": "untrained weights, latency benchmark only"})
    export.warmup_records(out / "assets.extra" / export.WARMUP_FILE, name, size)


def wait_http(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


def post(url: str, body: bytes) -> float:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - start


def percentiles(times) -> tuple[float, float]:
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def start_stack(repo: Path, batching: bool) -> tuple[list[subprocess.Popen], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    grpc_port, http_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving", "serve", "--model-repo", str(repo), "--port",
                               str(grpc_port)] + ([] if batching else ["--no-batching"]), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{http_port}",
                                "--workers", "1", "--threads", "24", "gateway.wsgi:app"], cwd=ROOT,
                               env={**env, "MODEL_REPO": str(repo), "SERVING_ADDRESS": f"127.0.0.1:{grpc_port}",
                                    "PREDICT_DEADLINE_S": "120"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    wait_http(url + "/readyz")
    return [server, gateway], url


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args(argv)
    import tensorflow as tf
    from PIL import Image

    from components import catalog
    from serving import repository

    n, size = args.requests, args.image_size
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    body = json.dumps({"image": {"b64": base64.b64encode(png).decode()}}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        repo, direct = Path(tmp) / "repo", {}
        for backbone in catalog.BACKBONES:
            out = Path(tmp) / backbone
            export_untrained(backbone, size, out)
            repository.push(out, repo)
            fn = tf.saved_model.load(str(out)).signatures["serving_default"]
            one, sixteen = tf.constant([png]), tf.constant([png] * 16)
            for _ in range(3):
                fn(image_bytes=one)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                fn(image_bytes=one)
                times.append(time.perf_counter() - t)
            fn(image_bytes=sixteen)
            t = time.perf_counter()
            for _ in range(3):
                fn(image_bytes=sixteen)
            direct[backbone] = (percentiles(times), 48 / (time.perf_counter() - t))
        tf.keras.backend.clear_session()

        print(f"gateway benchmark, {size} px, {n} requests per figure, {os.cpu_count()} CPU cores")
        results = {}
        for batching in (True, False):
            procs, url = start_stack(repo, batching)
            try:
                single = {}
                for backbone in catalog.BACKBONES:
                    name = catalog.model_name(MODALITY, backbone, STRATEGY)
                    for _ in range(3):
                        post(f"{url}/api/v1/models/{name}:predict", body)
                    single[backbone] = percentiles([post(f"{url}/api/v1/models/{name}:predict", body) for _ in range(n)])
                compare = percentiles([post(f"{url}/api/v1/cohorts/{MODALITY}/{STRATEGY}:compare", body) for _ in range(n)])
                name = catalog.model_name(MODALITY, "resnet50", STRATEGY)
                throughput = {}
                for clients in (1, 4, 16):
                    total = max(clients * 4, 16)
                    t = time.perf_counter()
                    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                        list(pool.map(lambda _: post(f"{url}/api/v1/models/{name}:predict", body), range(total)))
                    throughput[clients] = total / (time.perf_counter() - t)
                results[batching] = (single, compare, throughput)
            finally:
                for p in procs:
                    p.terminate()
                    p.wait(30)

    single, compare, throughput = results[True]
    print("\nsingle-model latency (batching on)      direct p50/p99      gateway p50/p99    overhead")
    for backbone in catalog.BACKBONES:
        (d50, d99), _ = direct[backbone]
        g50, g99 = single[backbone]
        print(f"  {backbone:<12} {d50:9.1f} / {d99:7.1f} ms   {g50:9.1f} / {g99:7.1f} ms   {100 * (g50 / d50 - 1):6.1f} %"
              "  (target <= 10 %)")
    slowest = max(single.values())[0]
    total = sum(v[0] for v in single.values())
    print(f"\ncompare (3 backbones in parallel): p50 {compare[0]:.1f} ms, p99 {compare[1]:.1f} ms; "
          f"{compare[0] / slowest:.2f}x the slowest single p50 (target <= 1.25x); "
          f"sequential would be ~{total:.0f} ms ({compare[0] / total:.2f}x of that)")
    batch16 = direct["resnet50"][1]
    print(f"\nthroughput, resnet50 (model's own batch-16 rate in-process: {batch16:.1f} images/s)")
    for clients in (1, 4, 16):
        on, off = results[True][2][clients], results[False][2][clients]
        print(f"  {clients:>2} clients: batching on {on:6.1f} img/s ({on / batch16:.2f}x), "
              f"off {off:6.1f} img/s ({off / batch16:.2f}x)" + ("   (target at 16: >= 0.8x)" if clients == 16 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
