"""``make loadtest``: the gateway and the model server under load while models roll out (a
benchmark, not CI). Separate processes on loopback, as deployed:

1. single predictions: Locust, headless, N users for S seconds, the gateway sending
   ``--canary-percent`` (10) of a model's requests to its canary; meanwhile a better candidate
   meets the stable version (champion and challenger on the same test records) and is pushed as
   the canary, a worse one is refused for canary with its AUC difference and interval, a broken
   export is refused before it is published, and the canary is rolled back. Every answer must
   be 200, none may come from a broken version, and the canary's share is counted;
2. compares of the cohort's three backbones: N users for S seconds;
3. the model server killed: answers are 503 with Retry-After, and recover once it is back;
4. SIGTERM to the gateway with requests in flight: /readyz answers 503 at once, every request
   in flight is answered, then the process exits 0.

Untrained exports at 64 px by default (latency does not depend on the weights; 64 px keeps two
CPU cores from being the only thing measured). The candidates' evaluations are made for the
occasion on a small synthetic test split (one clearly better than the stable model, one clearly
worse): the roll-out machinery is what is measured, not a model. Figures go to the terminal and
OUT/loadtest.json.

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

    def __init__(self, repo: Path, threads: int, canary_percent: float = 0.0):
        self.repo, self.threads = repo, threads
        self.grpc_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.server = self.start_server()
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--model-repo", str(repo), "--serving", f"127.0.0.1:{self.grpc_port}",
             "--port", str(self.http_port), "--threads", str(threads), "--deadline", "30", "--drain-delay", "2",
             "--canary-percent", str(canary_percent), "--auth", "none", "--rate-limit", "1000000/minute"],
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


def test_split(tmp: Path) -> Path:
    """A synthetic ultrasound split: the records the champion and the challengers meet on."""
    from components import extract, sample_data, split

    sample_data.run("ultrasound", tmp / "data", count=400, seed=5)   # ~50 test records: a verdict, not noise
    extract.run("ultrasound", tmp / "data", tmp / "examples")
    split.run(tmp / "examples", tmp / "splits", seed=0)
    return tmp / "splits"


def candidate(splits: Path, out: Path, name: str, better: bool) -> Path:
    """An evaluation of ``name`` whose probabilities follow the labels (better) or oppose them."""
    from components.data import records, schema
    from components.evaluation import predictions, scoring

    rng = np.random.default_rng(1 if better else 2)

    def scored(split: str):
        recs = [schema.deserialize(r) for r in records.read_records(splits / split)]
        y = np.array([r.label for r in recs])
        p = np.clip((0.2 + 0.6 * y if better else 0.7 - 0.4 * y) + rng.normal(0, 0.05, len(y)), 0.01, 0.99)
        return predictions.Scored(y, p, [r.source_id for r in recs], [r.patient_id for r in recs], [r.source for r in recs])

    scoring.report(name, MODALITY, scored("validation"), scored("test"), splits / "test", splits / "validation", out,
                    min_f1=0.0, bootstrap=500)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default="loadtest-output")
    ap.add_argument("--canary-percent", type=float, default=10.0, help="share of requests sent to a canary")
    args = ap.parse_args(argv)
    if not LOCUST.exists():
        print(f"{LOCUST} is missing: run `make loadtest`, which makes it from requirements-loadtest.txt")
        return 2
    from PIL import Image

    from components.core import catalog
    from serving import layout, repository

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = catalog.model_name(MODALITY, "resnet50", STRATEGY)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        for backbone in catalog.BACKBONES:
            export_untrained(backbone, args.image_size, tmp / backbone)
            repository.push(tmp / backbone, repo)
        better = variant(tmp / "resnet50", tmp / "better", "a better candidate")
        worse = variant(tmp / "resnet50", tmp / "worse", "a worse candidate")
        broken = variant(tmp / "resnet50", tmp / "broken", "a broken export", broken=True)
        splits = test_split(tmp)
        png = tmp / "upload.png"
        Image.fromarray((np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)).save(png)
        body = json.dumps({"image": {"b64": base64.b64encode(png.read_bytes()).decode()}}).encode()
        decisions = []

        def roll_out(export_dir, is_better: bool | None):
            """Champion and challenger, then the push the blessing allows (as the pipeline's steps)."""
            from components import challenge

            def act():
                if is_better is None:              # a broken export: the push's own check refuses it
                    r = repository.push(export_dir, repo, canary={"blessed": True, "reason": "operator"})
                    decisions.append({"candidate": "broken", "pushed": r.pushed, "reason": r.reason})
                    return f"{r.reason}; labels now {layout.labels(repo, name)}"
                evaluation = candidate(splits, tmp / f"eval-{export_dir.name}", name, is_better)
                verdict = challenge.run(evaluation, splits / "test", layout.stable_version(repo, name),
                                        tmp / f"challenge-{export_dir.name}",
                                        bootstrap=500)
                decision = {"candidate": export_dir.name, "blessed": verdict["blessed"], "reason": verdict["reason"]}
                if verdict["blessed"]:
                    decision["push"] = repository.push(export_dir, repo, canary=verdict).reason
                decisions.append(decision)
                return f"{'blessed' if verdict['blessed'] else 'refused'} for canary: {verdict['reason']}; " \
                       f"labels now {layout.labels(repo, name)}"
            return act

        def rollback():
            entry = repository.rollback(repo, name, reason="the load test rolls the canary back")
            decisions.append({"rollback": entry["label"], "from": entry["from"], "to": entry["to"]})
            return f"rolled back the canary {entry['from']}; labels now {layout.labels(repo, name)}"

        print(f"load test: {args.users} users x {args.seconds} s per phase, {args.image_size} px models, "
              f"{os.cpu_count()} CPU cores", flush=True)
        stack = Stack(repo, threads=args.users, canary_percent=args.canary_percent)
        try:
            print(f"phase 1: single predictions while versions roll out ({args.canary_percent:g} % to a canary)",
                  flush=True)
            single = locust("single", stack.url, args.users, args.seconds, png, out, [
                (0.15, "a better candidate meets the stable version", roll_out(better, True)),
                (0.35, "a worse candidate meets the stable version", roll_out(worse, False)),
                (0.50, "a broken export is pushed", roll_out(broken, None)),
                (0.75, "the canary is rolled back", rollback)])
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

    figures = {"users": args.users, "seconds": args.seconds, "image_size": args.image_size,
               "canary_percent": args.canary_percent, "single": single, "decisions": decisions,
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
    canary_share = seen.get(f"{name}:2", 0) / max(1, sum(seen.values()))
    print(f"\nroll-out: answers by version {seen} (version 2, the canary for part of the run: "
          f"{canary_share:.1%} of all); no version was broken (the broken export was refused); "
          f"after it the gateway lists version {served}")
    for d in decisions:
        print(f"  decision: {d}")
    print(f"model server down: {down_status} with Retry-After {down_headers.get('Retry-After')}; "
          f"recovered {recovered:.1f} s after restart ({up_status})")
    print(f"SIGTERM: /readyz {ready_during_drain} while draining; in-flight answers "
          f"{sorted(set(drained))} x {len(drained)}; exit {exit_code} after {exit_after:.1f} s")
    refused = [d for d in decisions if d.get("candidate") == "worse" and not d["blessed"]]
    broken_refused = [d for d in decisions if d.get("candidate") == "broken" and not d["pushed"]]
    ok = (single["failures"] == compare["failures"] == 0 and set(seen) <= {f"{name}:1", f"{name}:2"}
          and refused and broken_refused and down_status == 503
          and down_headers.get("Retry-After") and up_status == 200 and ready_during_drain == 503
          and set(drained) == {200} and exit_code == 0)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
