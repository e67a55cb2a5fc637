"""The gateway as it runs in production (waitress, `python -m gateway`): slow clients cannot
starve it, SIGTERM drains, and uploads reach the model server no larger than needed."""
import base64
import concurrent.futures
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from components.data import records, schema
from gateway.__main__ import server
from gateway.uploads import read_image, transport_side
from serving import layout, repository
from serving.server import Server, free_port
from tests.conftest import PHI_KEY, gateway_config, signed_in


NAME = "ultrasound-resnet50-unfrozen"


def _get(url: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_healthz_answers_while_64_slow_clients_trickle_uploads(tmp_path, issuer):
    """With gunicorn's 2 workers x 8 threads, 16 such clients froze /healthz for over 50 s."""
    _, http = server(gateway_config(issuer, tmp_path, f"127.0.0.1:{free_port()}"), "127.0.0.1", 0, threads=4)
    threading.Thread(target=http.run, daemon=True).start()
    port = http.effective_port
    slow = []
    try:
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"POST /api/v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      "Content-Length: 1000000\r\n\r\n".encode() + b"\x89PNG")
            slow.append(s)
        stop = threading.Event()

        def trickle():
            while not stop.wait(0.2):
                for s in slow:
                    try:
                        s.send(b"\x00")
                    except OSError:
                        pass
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.0)
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            status, _, body = _get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            latencies.append(time.monotonic() - started)
            assert status == 200 and json.loads(body)["status"] == "ok"
        stop.set()
        assert max(latencies) < 1.0, latencies
    finally:
        for s in slow:
            s.close()
        http.close()


def test_a_large_upload_reaches_the_model_server_no_larger_than_needed(tmp_path):
    from flask import Flask, request

    big = io.BytesIO()
    ramp = np.linspace(0, 255, 3000, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (1500, 1))] * 3, axis=-1)).save(big, "PNG")
    small = io.BytesIO()
    Image.fromarray(np.full((300, 200), 90, np.uint8)).save(small, "PNG")
    app = Flask(__name__)
    for data, expected in [(big.getvalue(), (1024, 512)), (small.getvalue(), (200, 300))]:
        with app.test_request_context("/", method="POST", data={"image": (io.BytesIO(data), "x.png")},
                                      content_type="multipart/form-data"):
            png = read_image(request, 10 << 20, 40_000_000, model_size=64).png
        assert Image.open(io.BytesIO(png)).size == expected
    assert transport_side(224) == 1024 and transport_side(512) == 2048


def test_sigterm_turns_readyz_to_503_answers_until_drained_then_exits(pipeline_outputs, sample_splits, tmp_path,
                                                                     issuer):
    root = tmp_path / "repo"
    repository.push(pipeline_outputs[NAME] / "saved_model", root)
    model_server = Server(root, port=0, poll_seconds=1.0)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BCIMAGING_PHI_KEY": PHI_KEY.decode()}
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--model-repo", str(root), "--serving",
                                f"127.0.0.1:{model_server.port}", "--port", str(port), "--drain-delay", "2",
                                "--drain-timeout", "10", "--oidc-issuer", issuer.url, "--oidc-audience", issuer.audience,
                                "--audit-log", str(tmp_path / "audit.jsonl")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    raw = sample_splits["ultrasound"].parent / "splits" / "test"
    png = schema.deserialize(next(records.read_records(raw))).image_png

    def predict():
        body = json.dumps({"image": {"b64": base64.b64encode(png).decode()}}).encode()
        req = urllib.request.Request(f"{url}/api/v1/models/{NAME}:predict", data=body,
                                     headers={"Content-Type": "application/json", **issuer.headers()})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if _get(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert _get(f"{url}/readyz")[0] == 200
        gateway.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, headers, _ = _get(f"{url}/readyz")
        assert status == 503 and headers.get("Retry-After")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:       # still answering while draining
            assert list(pool.map(lambda _: predict(), range(8))) == [200] * 8
        assert gateway.wait(timeout=30) == 0
        assert "gateway stopped" in gateway.stdout.read()
    finally:
        if gateway.poll() is None:
            gateway.kill()
        model_server.stop()


def test_the_gateway_shows_the_card_of_the_version_the_server_answers_with(pipeline_outputs, sample_splits, tmp_path,
                                                                            issuer):
    """A newer export that does not load must not lend its card to the version still serving: it
    is refused at the push, and the gateway shows and answers with version 1."""
    import shutil

    from gateway.app import create_app
    from serving.client import ServingClient

    root = tmp_path / "repo"
    repository.push(pipeline_outputs[NAME] / "saved_model", root)
    broken = tmp_path / "broken"
    shutil.copytree(pipeline_outputs[NAME] / "saved_model", broken)
    card = json.loads((broken / layout.CARD).read_text())
    (broken / layout.CARD).write_text(json.dumps({**card, "threshold": 0.123, "note": "broken"}))
    (broken / "saved_model.pb").write_bytes((broken / "saved_model.pb").read_bytes()[:500])
    model_server = Server(root, port=0, poll_seconds=0.2)
    client = ServingClient(f"127.0.0.1:{model_server.port}")
    try:
        # a push refuses an export that does not load: nothing is published (the test waited
        # 30 s here for the server to fail loading a version 2 that no longer exists)
        refused = repository.push(broken, root)
        assert not refused.pushed and "refused" in refused.reason and layout.versions(root, NAME) == [1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (1, "AVAILABLE") not in client.status(NAME):
            time.sleep(0.2)
        app = signed_in(create_app(gateway_config(issuer, root, f"127.0.0.1:{model_server.port}",
                                                  repository_refresh_s=0)).test_client(), issuer)
        assert app.get("/readyz").status_code == 200
        (listed,) = app.get("/api/v1/models").json["models"]
        assert listed["version"] == 1 and listed["threshold"] == card["threshold"]
        raw = sample_splits["ultrasound"].parent / "splits" / "test"
        png = schema.deserialize(next(records.read_records(raw))).image_png
        answer = app.post(f"/api/v1/models/{NAME}:predict", json={"image": {"b64": base64.b64encode(png).decode()}})
        assert answer.status_code == 200 and answer.json["version"] == 1
        assert b"0.123" not in app.get(f"/models/{NAME}").data
    finally:
        client.close()
        model_server.stop()


def test_concurrent_uploads_decode_at_most_max_decodes_at_once(tmp_path, issuer):
    """Eight large uploads at once: only ``max_decodes`` of them hold decoded pixels at a time."""
    from components.imaging import images
    from gateway.app import create_app

    big = io.BytesIO()
    Image.fromarray(np.zeros((2000, 2000, 3), np.uint8)).save(big, "PNG")
    body = {"image": {"b64": base64.b64encode(big.getvalue()).decode()}}
    app = create_app(gateway_config(issuer, tmp_path, f"127.0.0.1:{free_port()}", max_decodes=2))
    state = app.extensions["gateway"]
    active, peak, lock = [0], [0], threading.Lock()
    decode = images.decode

    def observed(data, max_pixels):          # the real decode, counted
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return decode(data, max_pixels)
        finally:
            with lock:
                active[0] -= 1

    images.decode = observed
    try:
        def upload(_):
            with app.test_request_context("/", method="POST", json=body):
                from flask import request
                return len(state.read_upload(request, 64).png)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(upload, range(8)))
    finally:
        images.decode = decode
    assert peak[0] == 2 and len(set(sizes)) == 1


def _deleted_files_open() -> list[str]:
    """Files this process holds open that are already unlinked: how a spooled body looks (waitress
    and the tempfile module unlink a temporary file as they create it)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)") and not target.startswith(("/memfd:", "/dev/")):
            found.append(target)
    return found


def _start_upload(port: int, size: int, headers: dict) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(f"POST /api/v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              f"Content-Length: {size}\r\n{head}\r\n".encode())
    return s


def _answer(s: socket.socket) -> tuple[int, str]:
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return int(head.split()[1]), head


def test_a_large_upload_is_held_in_memory_and_never_written_to_disk(tmp_path, issuer):
    """Waitress spooled every body over 512 KB to a temporary file: an uploaded mammogram on the
    node's disk, while the pages say images are never stored."""
    _, http = server(gateway_config(issuer, tmp_path, f"127.0.0.1:{free_port()}"), "127.0.0.1", 0, threads=2)
    threading.Thread(target=http.run, daemon=True).start()
    size, before = 8 << 20, set(_deleted_files_open())
    try:
        s = _start_upload(http.effective_port, size, issuer.headers(("clinician",)))
        s.sendall(b"\x89PNG" + b"\x00" * (6 << 20))          # 6 MB of 8 received: held by waitress
        time.sleep(0.5)
        assert http.budget.used == size
        assert set(_deleted_files_open()) == before
        s.sendall(b"\x00" * (size - 4 - (6 << 20)))
        status, _ = _answer(s)
        assert status == 404                                   # no such model here; the body was read whole
        s.close()
        assert set(_deleted_files_open()) == before
    finally:
        http.close()


def test_uploads_beyond_the_memory_budget_get_503_with_retry_after_and_the_budget_comes_back(tmp_path, issuer):
    budget = 20 << 20
    _, http = server(gateway_config(issuer, tmp_path, f"127.0.0.1:{free_port()}"), "127.0.0.1", 0, threads=2,
                     body_budget_bytes=budget)
    threading.Thread(target=http.run, daemon=True).start()
    port, auth = http.effective_port, issuer.headers(("clinician",))
    try:
        held = [_start_upload(port, 8 << 20, auth) for _ in range(2)]      # 16 MB of 20 promised, bodies pending
        time.sleep(0.3)
        assert http.budget.used == 16 << 20
        third = _start_upload(port, 8 << 20, auth)
        status, head = _answer(third)
        assert status == 503 and "Retry-After: 5" in head, head
        third.close()
        small = _start_upload(port, 1 << 20, auth)                          # what fits is still taken
        small.sendall(b"\x00" * (1 << 20))
        assert _answer(small)[0] == 404
        small.close()
        for s in held:                                                      # clients gone mid-body
            s.close()
        deadline = time.monotonic() + 5
        while http.budget.used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.budget.used == 0
        again = _start_upload(port, 8 << 20, auth)
        again.sendall(b"\x00" * (8 << 20))
        assert _answer(again)[0] == 404
        again.close()
    finally:
        http.close()


def test_the_gateway_alone_serves_https_only_with_hsts_and_bodies_in_memory(tmp_path, issuer):
    """``--tls-cert/--tls-key``: Hypercorn serves the same app over TLS (waitress has none); a
    plaintext request to that port gets no HTTP answer, a client that does not trust the CA is
    refused, and uploads keep to the memory budget there too."""
    import ssl

    from components.core.tls import TLSFiles
    from tests.tlsca import CertificateAuthority

    ca = CertificateAuthority(tmp_path / "ca")
    pair = ca.certify("gateway", client=False)
    _, https = server(gateway_config(issuer, tmp_path, f"127.0.0.1:{free_port()}"), "127.0.0.1", 0, threads=2,
                      body_budget_bytes=10 << 20, tls_files=TLSFiles(pair.cert, pair.key))
    threading.Thread(target=https.run, daemon=True).start()
    port, trusted = https.effective_port, TLSFiles(ca=ca.cert).client_context()
    try:
        with urllib.request.urlopen(f"https://localhost:{port}/healthz", context=trusted, timeout=10) as r:
            assert r.status == 200 and r.headers["Strict-Transport-Security"].startswith("max-age=")
        upload = http.client.HTTPSConnection("localhost", port, context=trusted, timeout=10)
        upload.putrequest("POST", f"/api/v1/models/{NAME}:predict")       # 12 MB declared, none sent yet
        for header, value in {"Content-Type": "image/png", "Content-Length": str(12 << 20),
                              **issuer.headers(("clinician",))}.items():
            upload.putheader(header, value)
        upload.endheaders()
        refused = upload.getresponse()
        assert refused.status == 503 and refused.headers["Retry-After"] == "5"
        upload.close()
        plain = socket.create_connection(("127.0.0.1", port), timeout=5)
        plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert not plain.recv(4096).startswith(b"HTTP/1.1 200")
        except OSError:
            pass                                                  # reset: no plaintext spoken here
        plain.close()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://localhost:{port}/healthz", context=ssl.create_default_context(),
                                   timeout=10)
        assert https.budget.used == 0
    finally:
        https.close()


def test_the_https_gateway_answers_healthz_while_16_slow_clients_trickle_uploads(tmp_path, issuer):
    """Hypercorn too reads bodies in its event loop: TLS clients trickling uploads hold a
    connection each, not one of the two threads that run the app."""
    import ssl

    from components.core.tls import TLSFiles
    from tests.tlsca import CertificateAuthority

    ca = CertificateAuthority(tmp_path / "ca")
    pair = ca.certify("gateway", client=False)
    _, https = server(gateway_config(issuer, tmp_path, f"127.0.0.1:{free_port()}"), "127.0.0.1", 0, threads=2,
                      tls_files=TLSFiles(pair.cert, pair.key))
    threading.Thread(target=https.run, daemon=True).start()
    trusted = TLSFiles(ca=ca.cert).client_context()
    slow, stop = [], threading.Event()
    try:
        for _ in range(16):
            s = trusted.wrap_socket(socket.create_connection(("127.0.0.1", https.effective_port), timeout=10),
                                    server_hostname="localhost")
            s.sendall(f"POST /api/v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      "Content-Length: 1000000\r\n\r\n".encode() + b"\x89PNG")
            slow.append(s)

        def trickle():
            while not stop.wait(0.2):
                for s in slow:
                    try:
                        s.send(b"\x00")
                    except (OSError, ssl.SSLError):
                        pass
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.0)
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            with urllib.request.urlopen(f"https://localhost:{https.effective_port}/healthz", context=trusted,
                                        timeout=5) as r:
                assert r.status == 200
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, latencies
    finally:
        stop.set()
        for s in slow:
            s.close()
        https.close()
