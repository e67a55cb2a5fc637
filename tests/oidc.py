"""A minimal OpenID provider the tests serve on loopback: a discovery document, a JWKS with RSA and
EC keys made with ``cryptography``, a token endpoint for OAuth2 client credentials, key rotation,
and tokens of any shape (expired, for another audience, signed by a key it does not publish, with
``alg: none``) for the attacks. It counts how often its JWKS is fetched."""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "bcimaging-gateway"


def new_key(kind: str = "RSA"):
    return rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RSA" else \
        ec.generate_private_key(ec.SECP256R1())


def public_jwk(key, kid: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig",
            "alg": "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"}


class Issuer:
    """``with Issuer() as issuer``: serving on 127.0.0.1; ``issuer.token(...)`` mints."""

    def __init__(self, audience: str = AUDIENCE):
        self.audience = audience
        self.keys = {"rsa-1": new_key("RSA"), "ec-1": new_key("EC")}
        self.published = set(self.keys)
        self.jwks_fetches = 0
        self.clients: dict[str, tuple[str, list[str]]] = {}      # client id -> (secret, roles)
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, body: dict, status: int = 200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    self._json({"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks",
                                "token_endpoint": f"{issuer.url}/token",
                                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                                "grant_types_supported": ["client_credentials"]})
                elif self.path == "/jwks":
                    with issuer._lock:
                        issuer.jwks_fetches += 1
                        keys = [public_jwk(issuer.keys[k], k) for k in sorted(issuer.published)]
                    self._json({"keys": keys})
                else:
                    self._json({"error": "not found"}, 404)

            def do_POST(self):
                if self.path != "/token":
                    return self._json({"error": "not found"}, 404)
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                scheme, _, credentials = (self.headers.get("Authorization") or "").partition(" ")
                client, _, secret = base64.b64decode(credentials or "").decode().partition(":") \
                    if scheme == "Basic" else ("", "", "")
                client, secret = urllib.parse.unquote(client), urllib.parse.unquote(secret)
                known = issuer.clients.get(client)
                if form.get("grant_type") != ["client_credentials"] or not known or known[0] != secret:
                    return self._json({"error": "invalid_client"}, 401)
                self._json({"access_token": issuer.token(client, known[1], azp=client), "token_type": "Bearer",
                            "expires_in": 300})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Issuer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def register_client(self, client: str, secret: str, roles: list[str]) -> None:
        self.clients[client] = (secret, roles)

    def token(self, subject: str = "dr-example", roles=("clinician",), *, audience: str | None = None,
              expires_in: float = 3600, not_before: float | None = None, kid: str = "rsa-1", key=None,
              issuer: str | None = None, algorithm: str | None = None, **claims) -> str:
        """A signed access token; ``key`` signs with a key of the caller's (a forgery) under ``kid``."""
        now = time.time()
        payload = {"iss": issuer or self.url, "sub": subject, "aud": audience or self.audience, "iat": int(now),
                   "exp": int(now + expires_in), "jti": uuid.uuid4().hex, "roles": list(roles), **claims}
        if not_before is not None:
            payload["nbf"] = int(not_before)
        signing = key if key is not None else self.keys[kid]
        alg = algorithm or ("RS256" if isinstance(signing, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(payload, signing, algorithm=alg, headers={"kid": kid})

    def unsigned(self, subject: str = "dr-example", roles=("clinician",)) -> str:
        """A token with ``alg: none`` (no signature), as an attacker would send it."""
        def part(obj):
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
        now = time.time()
        return f'{part({"alg": "none", "typ": "JWT", "kid": "rsa-1"})}.' \
               f'{part({"iss": self.url, "sub": subject, "aud": self.audience, "exp": int(now + 3600), "roles": list(roles)})}.'

    def rotate(self) -> str:
        """A new signing key published beside the old ones; returns its key id."""
        kid = f"rsa-{len(self.keys) + 1}"
        with self._lock:
            self.keys[kid] = new_key("RSA")
            self.published.add(kid)
        return kid

    def retire(self, kid: str) -> None:
        with self._lock:
            self.published.discard(kid)

    def headers(self, roles=("clinician",), subject: str = "dr-example") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject, roles)}"}
