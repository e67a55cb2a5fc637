"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for tests, on free ports, with
a config written into a temporary folder. Usage::

    from tests import orthanc

    @orthanc.required
    def test_pacs(tmp_path):
        with orthanc.running(tmp_path, node=("NODE_AET", node_port)) as pacs:
            instance_id = pacs.upload(part10_bytes)
            pacs.send("node", instance_id)

Orthanc 1.10 has no bind address: its DICOM and HTTP ports listen on every interface. Where
this process may create network namespaces (root, as in CI), Orthanc runs in one of its own,
which holds only a loopback interface, so nothing outside this machine, and nothing on it but
these tests, can reach it. The tests reach it through relays this module runs: a socket is
created inside Orthanc's namespace (``setns`` on the calling thread only) and bytes are copied
to and from a socket on this machine's loopback. One relay runs the other way, so Orthanc's
C-STORE to the node lands on the node's loopback port. Elsewhere Orthanc runs on this
machine's loopback, with ``RemoteAccessAllowed`` false (HTTP from other hosts refused) and
C-STORE accepted only from the configured node at 127.0.0.1.

Its REST and DICOMweb APIs require authentication (``AuthenticationEnabled``): the node writes as
user ``node``, the tests read as user ``tests``; anonymous requests get 401.

Every hop is encrypted, as at a hospital: HTTPS (``SslEnabled``) and DICOM TLS
(``DicomTlsEnabled``), both with a certificate from a test CA (``tests/tlsca.py``, ``Orthanc.ca``),
and both requiring the peer's certificate from that CA: an HTTPS client's (``SslVerifyPeers``)
and a DICOM peer's (``DicomTlsRemoteCertificateRequired``). Orthanc sends to the node over DICOM
TLS too (``UseDicomTls``), so the node's door needs a certificate from ``Orthanc.ca``.

Debian 12's Orthanc serves HTTP with the system's civetweb 1.15, which loads OpenSSL at run time
and looks up ``SSL_get_peer_certificate``; OpenSSL 3 exports it only as
``SSL_get1_peer_certificate`` (the same function renamed), so civetweb calls a null pointer on
the first HTTPS request and Orthanc dies. ``_openssl_names`` builds, with the C compiler, a
``libssl.so`` that exports the old name, forwards to the new one and pulls in the real
``libssl.so.3`` for everything else, and Orthanc finds it first (``LD_LIBRARY_PATH``).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import base64
import secrets
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.tlsca import CertificateAuthority, Pair

BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AE_TITLE = "ORTHANC"
INSTALL_HINT = "Orthanc is not installed: apt-get install orthanc orthanc-dicomweb"
CLONE_NEWNET = 0x40000000

# Run as Orthanc's launcher after unshare(1): bring the new namespace's loopback up (it starts
# down, and Debian's iproute2 is not promised in CI), then become Orthanc (the same process id).
_LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack("16sH14s", b"lo", 0, b"")
    flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, request))[1]      # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b""))    # SIOCSIFFLAGS, IFF_UP
os.execv(sys.argv[1], sys.argv[1:])
"""


def installed() -> bool:
    return Path(BINARY).is_file() and Path(DICOMWEB_PLUGIN).is_file()


required = pytest.mark.skipif(not installed(), reason=INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def namespaces_available() -> bool:
    """Whether this process may create a network namespace (``unshare -n``) and enter it."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@dataclass
class Orthanc:
    http: str                       # base URL reachable from this process
    dicom: tuple[str, int]          # host, port of its DICOM SCP, reachable from this process
    isolation: str                  # "network namespace" or "loopback"
    process: subprocess.Popen
    log_path: Path
    ca: CertificateAuthority | None = None          # Orthanc's certificate and its peers' come from it
    client: Pair | None = None                      # the tests' own client certificate
    users: dict = field(default_factory=dict)       # user -> password (the node's and the tests')
    relays: list = field(default_factory=list)
    aet: str = AE_TITLE

    @property
    def dicomweb(self) -> str:
        return f"{self.http}/dicom-web"

    def authorization(self, user: str = "tests") -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()}

    def session(self, user: str = "tests"):
        """A requests session signed in as ``user`` with the tests' certificate (for DICOMwebClient)."""
        import requests
        from dicomweb_client.session_utils import create_session_from_auth

        session = create_session_from_auth(requests.auth.HTTPBasicAuth(user, self.users[user]))
        session.verify, session.cert = str(self.ca.cert), (str(self.client.cert), str(self.client.key))
        session.trust_env = False         # else REQUESTS_CA_BUNDLE, where set, replaces ``verify``
        return session

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.load_cert_chain(self.client.cert, self.client.key)
        return context

    def password_file(self, folder: Path, user: str = "node") -> Path:
        path = folder / f"{user}.password"
        path.write_text(self.users[user])
        path.chmod(0o600)
        return path

    def rest(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
             user: str | None = "tests"):
        """(status, parsed JSON or raw bytes) of one REST call (``user`` None: anonymous)."""
        headers = {"Content-Type": content_type} if body is not None else {}
        request = urllib.request.Request(f"{self.http}{path}", data=body, method=method,
                                         headers={**headers, **(self.authorization(user) if user else {})})
        try:
            with urllib.request.urlopen(request, timeout=60, context=self._context()) as answer:
                status, data, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, data, kind = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, json.loads(data) if "json" in kind and data else data

    def upload(self, part10: bytes) -> str:
        """Store a Part 10 file (REST ``POST /instances``); Orthanc's id of the instance."""
        status, answer = self.rest("POST", "/instances", part10, "application/dicom")
        assert status == 200, f"Orthanc refused the upload ({status}): {answer}"
        return answer["ID"]

    def send(self, modality: str, instance_id: str) -> dict:
        """C-STORE an instance to one of the configured DICOM modalities (synchronous)."""
        status, answer = self.rest("POST", f"/modalities/{modality}/store", instance_id.encode(), "text/plain")
        assert status == 200, f"Orthanc could not send to {modality} ({status}): {answer}"
        return answer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def config(tmp: Path, dicom_port: int, http_port: int, node: tuple[str, int] | None, users: dict,
           ca: CertificateAuthority) -> dict:
    """Orthanc's JSON config: storage in ``tmp``, DICOMweb on, the node as its one modality,
    authentication required, HTTPS and DICOM TLS with certificates from ``ca``, both ways."""
    own = ca.certify("orthanc", server=True, client=True)         # client too: it calls the node
    https = tmp / "orthanc-https.pem"                           # civetweb's one file: key, then certificate
    https.write_bytes(own.key.read_bytes() + own.cert.read_bytes())
    https.chmod(0o600)
    modality = {"AET": node[0], "Host": "127.0.0.1", "Port": node[1], "UseDicomTls": True} if node else None
    return {
        "Name": "bcimaging-test-pacs", "DicomAet": AE_TITLE, "DicomPort": dicom_port, "HttpPort": http_port,
        "StorageDirectory": str(tmp / "storage"), "IndexDirectory": str(tmp / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": users,
        "DicomCheckCalledAet": True,            # a C-STORE must name ORTHANC
        "DicomAlwaysAllowStore": False,         # ... and come from a configured modality
        "DicomCheckModalityHost": True,         # ... at its configured address
        "DicomModalities": {"node": modality} if node else {},
        "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1, "HttpThreadsCount": 8,
        "SslEnabled": True, "SslCertificate": str(https), "SslMinimumProtocolVersion": 4,     # TLS 1.2 at least
        "SslVerifyPeers": True, "SslTrustedClientCertificates": str(ca.cert),
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(own.cert), "DicomTlsPrivateKey": str(own.key),
        "DicomTlsTrustedCertificates": str(ca.cert), "DicomTlsRemoteCertificateRequired": True,
    }


@contextlib.contextmanager
def running(tmp: Path, node: tuple[str, int] | None = None, isolate: bool | None = None):
    """A started Orthanc (yields ``Orthanc``), stopped and waited for at the end. ``node`` is the
    (AE title, loopback port) Orthanc knows as modality ``node``. ``isolate``: run it in a
    network namespace of its own (None: where this process may)."""
    if not installed():
        pytest.skip(INSTALL_HINT)
    isolate = namespaces_available() if isolate is None else isolate
    tmp.mkdir(parents=True, exist_ok=True)
    inner_dicom, inner_http = free_port(), free_port()
    users = {"node": secrets.token_urlsafe(16), "tests": secrets.token_urlsafe(16)}
    ca = CertificateAuthority(tmp / "pki", "orthanc test CA")
    (tmp / "orthanc.json").write_text(json.dumps(config(tmp, inner_dicom, inner_http, node, users, ca), indent=1))
    (tmp / "orthanc.json").chmod(0o600)
    log_path = tmp / "orthanc.log"
    command = [BINARY, f"--logdir={tmp}", str(tmp / "orthanc.json")]
    if isolate:
        command = ["unshare", "--net", "--", sys.executable, "-c", _LOOPBACK_UP, *command]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                                   env={**os.environ, **_openssl_names(tmp / "openssl-names")})
    pacs = None
    try:
        pacs = _connect(process, inner_dicom, inner_http, node, isolate, log_path)
        pacs.users, pacs.ca, pacs.client = users, ca, ca.certify("tests", server=False, client=True)
        _wait_until_up(pacs)
        yield pacs
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for relay in pacs.relays if pacs else ():
            relay.close()


def _openssl_names(folder: Path) -> dict[str, str]:
    """The environment that lets civetweb find ``SSL_get_peer_certificate`` (none needed where
    the system's libssl still exports it)."""
    libssl = ctypes.util.find_library("ssl")
    if libssl is None or hasattr(ctypes.CDLL(libssl), "SSL_get_peer_certificate"):
        return {}
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("Orthanc's HTTPS needs a C compiler here (cc) to give civetweb OpenSSL 1.1's function names")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "names.c").write_text(
        "void *SSL_get1_peer_certificate(const void *ssl);\n"
        "void *SSL_get_peer_certificate(const void *ssl) { return SSL_get1_peer_certificate(ssl); }\n")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libssl.so"), str(folder / "names.c"),
                    f"-l:{libssl}"], check=True, capture_output=True)
    return {"LD_LIBRARY_PATH": ":".join(filter(None, [str(folder), os.environ.get("LD_LIBRARY_PATH")]))}


def _connect(process, inner_dicom, inner_http, node, isolate, log_path) -> Orthanc:
    if not isolate:
        return Orthanc(f"https://127.0.0.1:{inner_http}", ("127.0.0.1", inner_dicom), "loopback", process, log_path)
    theirs = f"/proc/{process.pid}/ns/net"
    _wait_for_namespace(process, theirs)
    http, dicom = Relay(None, theirs, inner_http), Relay(None, theirs, inner_dicom)
    relays = [http, dicom]
    if node:     # Orthanc's C-STORE to 127.0.0.1:<node port> in its namespace reaches the node here
        relays.append(Relay(theirs, None, node[1], listen_port=node[1]))
    return Orthanc(f"https://127.0.0.1:{http.port}", ("127.0.0.1", dicom.port), "network namespace", process,
                   log_path, relays)


def _wait_for_namespace(process: subprocess.Popen, theirs: str) -> None:
    """Until the launcher has left this namespace (unshare(2) happens after the fork)."""
    own = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(theirs).st_ino != own:
                return
        time.sleep(0.02)
    raise RuntimeError("Orthanc's launcher never entered a network namespace of its own")


def _wait_until_up(pacs: Orthanc, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pacs.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {pacs.process.returncode}:\n{pacs.log()}")
        with contextlib.suppress(OSError):
            status, plugins = pacs.rest("GET", "/plugins")
            if status == 200:
                assert "dicom-web" in plugins, f"the DICOMweb plugin did not load: {plugins}\n{pacs.log()}"
                return
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer within {timeout_s:.0f} s:\n{pacs.log()}")


# -- network namespaces and relays -------------------------------------------------------------

def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) failed")


def socket_in(namespace: str | None, **kwargs) -> socket.socket:
    """A TCP socket that lives in the network namespace at path ``namespace`` (None: this
    process's). Only the calling thread visits the namespace, and only while creating it."""
    if namespace is None:
        return socket.socket(**kwargs)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(namespace, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(**kwargs)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


class Relay:
    """Listens on 127.0.0.1 in one namespace and connects each client to 127.0.0.1:``port`` in
    another, copying bytes both ways until either side closes."""

    def __init__(self, listen_ns: str | None, target_ns: str | None, port: int, listen_port: int = 0):
        self.target_ns, self.target_port = target_ns, port
        self.listener = socket_in(listen_ns)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", listen_port))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"relay:{self.port}").start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(client,), daemon=True).start()

    def _join(self, client: socket.socket) -> None:
        upstream = socket_in(self.target_ns)
        try:
            upstream.connect(("127.0.0.1", self.target_port))
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then pass the end on (a half-close), so a DICOM release or
    an HTTP answer read to its end still arrives."""
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:         # one side reset: end both directions
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
