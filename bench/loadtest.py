"""``make loadtest``: the gateway and the model server under load while models roll out (a
benchmark, not CI). Separate processes on loopback, as deployed:

1. single predictions: Locust, headless, N users for S seconds; meanwhile version 2 of the
   model is pushed (labels move: stable -> 1, canary -> 2), then a broken export as version 3
   (stable -> 2, canary -> 3; it cannot load), then a good version 4. Every answer must be
   200, and none may come from the broken version;
2. compares of the cohort's three backbones: N users for S seconds;
3. the model server killed: answers are 503 with Retry-After, and recover once it is back;
4. SIGTERM to the gateway with requests in flight: /readyz answers 503 at once, every request
   in flight is answered, then the process exits 0.

Untrained exports at 64 px by default (latency does not depend on the weights; 64 px keeps two
CPU cores from being the only thing measured). Figures go to the terminal and OUT/loadtest.json.

    python -m bench.loadtest [--users 16] [--seconds 60] [--image-size 64] [--out loadtest-output]
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bench.gateway import export_untrained, wait_http
from serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
LOCUST = ROOT / ".venv-loadtest" / "bin" / "locust"
MODALITY, STRATEGY = "ultrasound", "unfrozen"


def request(url: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json"} if body else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def variant(export_dir: Path, out: Path, note: str, broken: bool = False) -> Path:
    shutil.copytree(export_dir, out)
    card_path = out / "assets.extra" / "model_card.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "note": note}))
    if broken:                                    # a truncated graph: the export cannot load
        graph = out / "saved_model.pb"
        graph.write_bytes(graph.read_bytes()[:2000])
    return out


class Stack:
    """The model server and the gateway as separate processes."""

    def __init__(self, repo: Path, threads: int):
        self.repo, self.threads = repo, threads
        self.grpc_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.server = self.start_server()
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--model-repo", str(repo), "--serving", f"127.0.0.1:{self.grpc_port}",
             "--port", str(self.http_port), "--threads", str(threads), "--deadline", "30", "--drain-delay", "2"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/readyz")

    def start_server(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "serving", "serve", "--model-repo", str(self.repo), "--port",
                                 str(self.grpc_port), "--poll-seconds", "1"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        for p in (self.gateway, self.server):
            if p.poll() is None:
                p.kill()
                p.wait()


def locust(mode: str, url: str, users: int, seconds: int, png: Path, out: Path, events=()) -> dict:
    """Run Locust headless; at each (fraction of the run, description, action) do the action."""
    versions = out / f"versions-{mode}.json"
    env = {**os.environ, "LOADTEST_MODE": mode, "LOADTEST_PNG": str(png), "LOADTEST_VERSIONS": str(versions),
           "LOADTEST_COHORT": f"{MODALITY}/{STRATEGY}"}
    proc = subprocess.Popen([str(LOCUST), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(users),
                             "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(out / mode),
                             "--only-summary", "--loglevel", "WARNING"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    log = []
    for fraction, what, action in events:
        time.sleep(max(0.0, started + fraction * seconds - time.monotonic()))
        log.append(f"  t={time.monotonic() - started:4.0f} s  {what}: {action()}")
        print(log[-1], flush=True)
    _, err = proc.communicate(timeout=seconds + 120)
    with open(out / f"{mode}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "p50_ms": float(row["50%"]), "p95_ms": float(row["95%"]), "p99_ms": float(row["99%"]),
            "requests_per_s": float(row["Requests/s"]), "versions": json.loads(versions.read_text()),
            "events": log, "locust_errors": err.strip().splitlines()[-5:] if proc.returncode else []}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default="loadtest-output")
    args = ap.parse_args(argv)
    if not LOCUST.exists():
        print(f"{LOCUST} is missing: run `make loadtest`, which makes it from requirements-loadtest.txt")
        return 2
    from PIL import Image

    from components import catalog
    from serving import repository

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = catalog.model_name(MODALITY, "resnet50", STRATEGY)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        for backbone in catalog.BACKBONES:
            export_untrained(backbone, args.image_size, tmp / backbone)
            repository.push(tmp / backbone, repo)
        good2 = variant(tmp / "resnet50", tmp / "v2", "version 2")
        broken3 = variant(tmp / "resnet50", tmp / "v3", "version 3, broken", broken=True)
        good4 = variant(tmp / "resnet50", tmp / "v4", "version 4")
        png = tmp / "upload.png"
        Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)).save(png)
        body = json.dumps({"image": {"b64": base64.b64encode(png.read_bytes()).decode()}}).encode()

        def push(export_dir):
            def act():
                r = repository.push(export_dir, repo)
                config = repository.read_models_config(repo).model_config_list.config
                labels = next(dict(c.version_labels) for c in config if c.name == name)
                return f"{r.reason}; labels now {labels}"
            return act

        print(f"load test: {args.users} users x {args.seconds} s per phase, {args.image_size} px models, "
              f"{os.cpu_count()} CPU cores", flush=True)
        stack = Stack(repo, threads=args.users)
        try:
            print("phase 1: single predictions while versions roll out", flush=True)
            single = locust("single", stack.url, args.users, args.seconds, png, out, [
                (0.25, "push a good version 2", push(good2)),
                (0.50, "push a broken export as version 3", push(broken3)),
                (0.75, "push a good version 4", push(good4))])
            status = request(f"{stack.url}/api/v1/models")[2]
            served = next(m["version"] for m in status["models"] if m["name"] == name)
            print("phase 2: compares of the cohort's three backbones", flush=True)
            compare = locust("compare", stack.url, args.users, args.seconds, png, out)

            print("phase 3: the model server killed, then back", flush=True)
            stack.server.kill()
            stack.server.wait()
            down_status, down_headers, down_body = request(f"{stack.url}/api/v1/models/{name}:predict", body)
            started = time.monotonic()
            stack.server = stack.start_server()
            wait_http(stack.url + "/readyz")
            recovered = time.monotonic() - started
            up_status = request(f"{stack.url}/api/v1/models/{name}:predict", body)[0]

            print("phase 4: SIGTERM to the gateway with requests in flight", flush=True)
            with concurrent.futures.ThreadPoolExecutor(args.users) as pool:
                flying = [pool.submit(request, f"{stack.url}/api/v1/cohorts/{MODALITY}/{STRATEGY}:compare", body)
                          for _ in range(args.users)]
                time.sleep(0.05)
                stack.gateway.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                ready_during_drain = request(f"{stack.url}/readyz")[0]
                drained = [f.result()[0] for f in flying]
            exit_code = stack.gateway.wait(timeout=60)
            exit_after = time.monotonic() - sent
        finally:
            stack.stop()

    figures = {"users": args.users, "seconds": args.seconds, "image_size": args.image_size, "single": single,
               "compare": compare, "served_after_rollout": served,
               "outage": {"status": down_status, "retry_after": down_headers.get("Retry-After"),
                          "message": down_body.get("error"), "recovered_s": round(recovered, 1),
                          "after_recovery": up_status},
               "sigterm": {"readyz_during_drain": ready_during_drain, "in_flight_answers": drained,
                           "exit_code": exit_code, "exited_after_s": round(exit_after, 1)}}
    (out / "loadtest.json").write_text(json.dumps(figures, indent=1))
    print(f"\n{'phase':<10} {'requests':>9} {'non-2xx':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for phase, r in (("single", single), ("compare", compare)):
        print(f"{phase:<10} {r['requests']:>9} {r['failures']:>8} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
              f"{r['p99_ms']:>8.0f} {r['requests_per_s']:>7.1f}")
    seen = {k: v for k, v in single["versions"].items() if k.startswith(name)}
    print(f"\nroll-out: answers by version {seen}; the broken version 3 answered "
          f"{seen.get(f'{name}:3', 0)} times; after it the gateway lists version {served}")
    print(f"model server down: {down_status} with Retry-After {down_headers.get('Retry-After')}; "
          f"recovered {recovered:.1f} s after restart ({up_status})")
    print(f"SIGTERM: /readyz {ready_during_drain} while draining; in-flight answers "
          f"{sorted(set(drained))} x {len(drained)}; exit {exit_code} after {exit_after:.1f} s")
    ok = (single["failures"] == compare["failures"] == 0 and f"{name}:3" not in seen and down_status == 503
          and down_headers.get("Retry-After") and up_status == 200 and ready_during_drain == 503
          and set(drained) == {200} and exit_code == 0)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
