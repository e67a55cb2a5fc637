"""Gateway latency, throughput, memory and image size at 224 px, measured side by side in one run:

- direct: the same PNG by gRPC Predict straight to the model server (a separate process);
- single: through waitress -> gateway -> gRPC -> model server (separate processes, as
  deployed), per backbone, alternating with the direct call; overhead = the median of the paired
  differences (each gateway call minus the direct call right after it; target <= 3 ms), beside
  the difference of the p50s and of the p99s, and the gateway process' own CPU time per request
  (waitress included: what it takes from the model on a 2-core machine);
- 16 concurrent clients: p50 through the gateway against 16 concurrent direct calls;
- memory: the idle gateway process's resident size, beside the same gateway importing
  TensorFlow as it did before (target < 200 MB);
- image size: what the gateway image installs (requirements-gateway.txt) against the full lock
  it installed before, from the installed files' sizes (target: at least 1 GB smaller);
- compare: a cohort's three backbones through the gateway, against the slowest backbone's
  single p50 (target <= 1.25x; the report's sequential compare costs the sum);
- throughput with 1, 4 and 16 concurrent clients, server batching on and off, against the
  model's own batch-16 throughput in-process (target at 16 clients >= 0.8x);
- TLS: the single-model figures again with mutual TLS on the gRPC hop (gateway and direct
  client present certificates from a CA made for the run), beside the plaintext ones;
- identity: every gateway request carries a bearer token verified against a local OpenID
  provider (tests/oidc.py) as deployed; the token check alone (TokenVerifier.verify with the
  keys cached) is timed in-process over 2,000 tokens (target <= 0.3 ms p50).

Untrained weights: latency does not depend on what the weights are.

    python -m bench.gateway [--requests 30] [--image-size 224]
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
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

from bench import page
from tests.oidc import Issuer
from serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
MODALITY, STRATEGY = "ultrasound", "unfrozen"


def export_untrained(backbone: str, size: int, out: Path) -> None:
    import tensorflow as tf

    from components.core import artifacts, catalog
    from components.core.atomic import write_json
    from components.model import backbones, graph

    model = backbones.build(backbone, size, None)
    module = graph.serving_module(model, MODALITY, size, 0.5, backbones.BACKBONES[backbone].last_conv)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve, "explain": module.explain})
    name = catalog.model_name(MODALITY, backbone, STRATEGY)
    (out / "assets.extra").mkdir(exist_ok=True)
    nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    write_json(out / "assets.extra" / "model_card.json", {
        "model_name": name, "modality": MODALITY, "backbone": backbone, "strategy": STRATEGY,
        "label_names": list(catalog.modality(MODALITY).label_names), "threshold": 0.5, "image_size": size,
        "test_metrics": {m: nan for m in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")},
        "note": "untrained weights, latency benchmark only"})
    graph.warmup_records(out / "assets.extra" / artifacts.WARMUP_FILE, name, size)


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


SIGNED_IN: dict[str, str] = {}          # the benchmark client's Authorization header


def post(url: str, body: bytes) -> float:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **SIGNED_IN})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def installed_mb(requirements: Path) -> float:
    """Installed size of the pinned distributions of a requirements file, in this environment."""
    import importlib.metadata

    total = 0
    for line in requirements.read_text().splitlines():
        if "==" not in line or line.startswith("#"):
            continue
        try:
            dist = importlib.metadata.distribution(line.split("==")[0].split("[")[0])
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            path = Path(dist.locate_file(f))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def idle_memory(repo: Path) -> tuple[float, float]:
    """RSS (MB) of an idle gateway process, and of one that also imports TensorFlow (as before)."""
    figures = []
    for extra in ("", "import tensorflow; "):
        code = (f"{extra}import time; from pathlib import Path; from gateway.app import GatewayConfig, create_app; "
                f"create_app(GatewayConfig(Path({str(repo)!r}), auth='none')); print('up', flush=True); time.sleep(60)")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "MODEL_REPO": str(repo)})
        try:
            proc.stdout.readline()
            time.sleep(1.0)
            figures.append(rss_mb(proc.pid))
        finally:
            proc.kill()
            proc.wait()
    return figures[0], figures[1]


def percentiles(times) -> tuple[float, float]:
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrently(call, clients: int, total: int) -> list[float]:
    """Each call's seconds, ``clients`` at a time."""
    def timed(_):
        t = time.perf_counter()
        call()
        return time.perf_counter() - t

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(timed, range(total)))


def token_check_ms(issuer, count: int = 2000) -> tuple[float, float]:
    """p50 and p99 (ms) of verifying one bearer token with the issuer's keys cached."""
    from components.core.identity import IdentityConfig, TokenVerifier

    verifier = TokenVerifier(IdentityConfig(issuer.url, issuer.audience))
    tokens = [issuer.token(f"user-{i % 50}", ("clinician",)) for i in range(count)]
    verifier.verify(tokens[0])                      # fetches the discovery document and the keys once
    times = []
    for token in tokens:
        t = time.perf_counter()
        verifier.verify(token)
        times.append(time.perf_counter() - t)
    return percentiles(times)


def start_stack(repo: Path, batching: bool, issuer, tls=None) -> tuple[list[subprocess.Popen], str, str]:
    """Model server and gateway processes; with ``tls`` (tests.tlsca pairs: server, client, CA) the
    gRPC hop is mutual TLS."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BCIMAGING_PHI_KEY": "bench-phi-key-" + "0" * 24}
    grpc_port, http_port = free_port(), free_port()
    host = "localhost" if tls else "127.0.0.1"          # the name the server's certificate carries
    server_tls = ["--tls-cert", str(tls[0].cert), "--tls-key", str(tls[0].key), "--tls-ca", str(tls[2])] if tls else []
    client_tls = ["--serving-tls-cert", str(tls[1].cert), "--serving-tls-key", str(tls[1].key),
                  "--serving-tls-ca", str(tls[2])] if tls else []
    server = subprocess.Popen([sys.executable, "-m", "serving", "serve", "--model-repo", str(repo), "--port",
                               str(grpc_port)] + ([] if batching else ["--no-batching"]) + server_tls, cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--model-repo", str(repo), "--serving",
                                f"{host}:{grpc_port}", "--port", str(http_port), "--threads", "24", *client_tls,
                                "--deadline", "120", "--oidc-issuer", issuer.url, "--oidc-audience", issuer.audience,
                                "--audit-log", str(repo.parent / f"audit-{http_port}.jsonl"),
                                "--rate-limit", "1000000/minute"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    wait_http(url + "/readyz")
    return [server, gateway], url, f"{host}:{grpc_port}"


def stop_stack(procs: list[subprocess.Popen], client) -> None:
    client.close()
    for p in procs:
        p.terminate()
        p.wait(30)


def paired_single(url: str, client, body: bytes, png: bytes, n: int, gateway_pid: int, name: str):
    """(gateway seconds, direct seconds, gateway CPU ms per request) of ``n`` alternating calls."""
    for _ in range(3):
        post(f"{url}/api/v1/models/{name}:predict", body)
        client.predict(name, png)
    through, straight, cpu = [], [], 0.0
    for _ in range(n):              # alternate, so both see the same machine state
        before = cpu_seconds(gateway_pid)
        through.append(post(f"{url}/api/v1/models/{name}:predict", body))
        cpu += cpu_seconds(gateway_pid) - before
        t = time.perf_counter()
        client.predict(name, png)
        straight.append(time.perf_counter() - t)
    return through, straight, cpu * 1000 / n


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args(argv)
    import tensorflow as tf
    from PIL import Image

    from components.core import catalog
    from serving import repository
    from serving.client import ServingClient

    n, size = args.requests, args.image_size
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    body = json.dumps({"image": {"b64": base64.b64encode(png).decode()}}).encode()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
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
        memory = idle_memory(repo)
        results, grpc_direct, paired, crowd = {}, {}, {}, {}
        issuer = stack.enter_context(Issuer())
        SIGNED_IN.update(issuer.headers(("clinician", "operator")))
        check = token_check_ms(issuer)
        for batching in (True, False):
            procs, url, target = start_stack(repo, batching, issuer)
            client = ServingClient(target, deadline_s=120)
            try:
                single = {}
                for backbone in catalog.BACKBONES:
                    name = catalog.model_name(MODALITY, backbone, STRATEGY)
                    through, straight, cpu = paired_single(url, client, body, png, n, procs[1].pid, name)
                    single[backbone] = percentiles(through)
                    if batching:
                        grpc_direct[backbone] = percentiles(straight)
                        paired[backbone] = (float(np.median(np.subtract(through, straight)) * 1000), cpu)
                compare = percentiles([post(f"{url}/api/v1/cohorts/{MODALITY}/{STRATEGY}:compare", body) for _ in range(n)])
                name = catalog.model_name(MODALITY, "resnet50", STRATEGY)
                if batching:
                    crowd["gateway"] = percentiles(concurrently(
                        lambda: post(f"{url}/api/v1/models/{name}:predict", body), 16, 4 * n))
                    crowd["direct"] = percentiles(concurrently(lambda: client.predict(name, png), 16, 4 * n))
                throughput = {}
                for clients in (1, 4, 16):
                    total = max(clients * 4, 16)
                    t = time.perf_counter()
                    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                        list(pool.map(lambda _: post(f"{url}/api/v1/models/{name}:predict", body), range(total)))
                    throughput[clients] = total / (time.perf_counter() - t)
                results[batching] = (single, compare, throughput)
            finally:
                stop_stack(procs, client)

        # the same, batching on, with mutual TLS on the gRPC hop (certificates from a CA made here)
        from components.core.tls import TLSFiles
        from tests.tlsca import CertificateAuthority

        ca = CertificateAuthority(Path(tmp) / "ca")
        pairs = (ca.certify("model-server", client=False), ca.certify("gateway", server=False), ca.cert)
        procs, url, target = start_stack(repo, True, issuer, tls=pairs)
        client = ServingClient(target, deadline_s=120, tls=TLSFiles(pairs[1].cert, pairs[1].key, ca.cert))
        secure = {}
        try:
            for backbone in catalog.BACKBONES:
                name = catalog.model_name(MODALITY, backbone, STRATEGY)
                through, straight, _ = paired_single(url, client, body, png, n, procs[1].pid, name)
                secure[backbone] = (percentiles(through), percentiles(straight),
                                    float(np.median(np.subtract(through, straight)) * 1000))
        finally:
            stop_stack(procs, client)

    single, compare, throughput = results[True]
    print("\nsingle-model latency (batching on)   direct gRPC p50/p99    gateway p50/p99   "
          "overhead: paired p50, p50s, p99s   gateway CPU")
    for backbone in catalog.BACKBONES:
        d50, d99 = grpc_direct[backbone]
        g50, g99 = single[backbone]
        overhead, cpu = paired[backbone]
        print(f"  {backbone:<12} {d50:9.1f} / {d99:7.1f} ms   {g50:9.1f} / {g99:7.1f} ms   {overhead:+6.1f} ms"
              f" (target <= 3), {g50 - d50:+6.1f}, {g99 - d99:+6.1f} ms   {cpu:5.1f} ms/request")
    print("\nthe same with mutual TLS on the gRPC hop     direct gRPC+TLS p50   gateway p50   "
          "overhead: paired p50 (TLS on both), gateway p50 against plaintext direct p50")
    for backbone in catalog.BACKBONES:
        (g50, _), (d50, _), overhead = secure[backbone]
        print(f"  {backbone:<12} {d50:9.1f} ms ({d50 - grpc_direct[backbone][0]:+.1f} for TLS)   {g50:9.1f} ms   "
              f"{overhead:+6.1f} ms, {g50 - grpc_direct[backbone][0]:+6.1f} ms (target <= 3)")
    (c50, c99), (e50, e99) = crowd["gateway"], crowd["direct"]
    print(f"  16 concurrent clients, resnet50: gateway p50 {c50:.1f} / p99 {c99:.1f} ms, direct {e50:.1f} / "
          f"{e99:.1f} ms: overhead p50 {c50 - e50:+.1f} ms, p99 {c99 - e99:+.1f} ms")
    print(f"  token check (RS256, keys cached): p50 {check[0]:.3f} ms, p99 {check[1]:.3f} ms (target p50 <= 0.3 ms); "
          "every gateway figure above includes it")
    lean, with_tf = memory
    print(f"\nidle gateway process: {lean:.0f} MB resident; the same importing TensorFlow (as before) "
          f"{with_tf:.0f} MB, {with_tf - lean:.0f} MB more (target < 200 MB)")
    full, thin = installed_mb(ROOT / "requirements.txt"), installed_mb(ROOT / "requirements-gateway.txt")
    print(f"gateway image packages: {thin:.0f} MB installed (requirements-gateway.txt) against {full:.0f} MB "
          f"for the full lock it installed before: {(full - thin) / 1000:.2f} GB smaller (target >= 1 GB)")
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
    page.record("bench.gateway", {
        "requests": n, "image_px": size,
        **{f"overhead_p50_ms_{b}": round(paired[b][0], 2) for b in catalog.BACKBONES},
        **{f"direct_p50_ms_{b}": round(grpc_direct[b][0], 1) for b in catalog.BACKBONES},
        **{f"gateway_cpu_ms_{b}": round(paired[b][1], 2) for b in catalog.BACKBONES},
        **{f"overhead_tls_paired_p50_ms_{b}": round(secure[b][2], 2) for b in catalog.BACKBONES},
        "compare_p50_ms": round(compare[0], 1), "idle_rss_mb": round(lean),
        "token_check_p50_ms": round(check[0], 3), "token_check_p99_ms": round(check[1], 3),
        **{f"throughput_img_s_{c}_clients": round(results[True][2][c], 1) for c in (1, 4, 16)}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
