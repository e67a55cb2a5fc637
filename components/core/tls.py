"""TLS for every hop, from PEM files: one description of "which certificate, which key, which
authority to trust" for both ends of a connection, and the Python ``ssl`` contexts made from it.

A server with ``ca`` set requires a client certificate signed by that authority (mutual TLS); a
client with ``ca`` set trusts only that authority (else the system store), and presents its own
certificate when ``cert`` and ``key`` are given. TLS 1.2 at least, the library's default ciphers.
gRPC takes the same files as bytes (``read``): it has its own TLS stack.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class TLSFiles:
    cert: Path | None = None       # this end's certificate (PEM; a server always has one)
    key: Path | None = None        # its private key (PEM)
    ca: Path | None = None         # the authority the other end's certificate must chain to

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("a TLS certificate needs its key and a key its certificate: give both")

    @property
    def mutual(self) -> bool:
        return self.ca is not None and self.cert is not None

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(certificate, key, authority) as bytes, None where not given (grpc's credential calls)."""
        return tuple(Path(p).read_bytes() if p else None for p in (self.cert, self.key, self.ca))

    def server_context(self) -> ssl.SSLContext:
        if self.cert is None:
            raise ValueError("a TLS server needs a certificate and its key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.ca:
            context.load_verify_locations(cafile=str(self.ca))
            context.verify_mode = ssl.CERT_REQUIRED         # a client without a certificate from ca is refused
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


def add_arguments(parser, environ: Mapping[str, str], prefix: str, env_prefix: str, what: str) -> None:
    """``--{prefix}-cert/-key/-ca`` (env ``{env_prefix}_CERT``/``_KEY``/``_CA``) for one hop."""
    for part, meaning in (("cert", "certificate (PEM)"), ("key", "private key (PEM)"),
                          ("ca", "authority the other end must chain to (PEM)")):
        env = f"{env_prefix}_{part.upper()}"
        parser.add_argument(f"--{prefix}-{part}", default=environ.get(env), help=f"{what}: {meaning} (env {env})")


def from_arguments(args, prefix: str) -> TLSFiles | None:
    """The TLSFiles those flags name, or None when none was given (plaintext)."""
    attr = prefix.replace("-", "_")
    values = [getattr(args, f"{attr}_{part}") for part in ("cert", "key", "ca")]
    return TLSFiles(*(Path(v) if v else None for v in values)) if any(values) else None
