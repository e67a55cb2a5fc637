"""Who is asking: OpenID Connect bearer tokens, verified by the service itself against the
issuer's published keys, and the product's three roles.

A token is a JWT signed with RS256 or ES256 (never ``none``, never an HMAC: a public key is no
shared secret) by a key the issuer publishes in its JWKS (found through its discovery document).
Its issuer, audience, expiry and not-before are checked, and its subject and roles read from it.
The keys are cached; a token whose key id is unknown refreshes them once, at most every
``min_refresh_s``, so a flood of tokens with made-up key ids costs no flood of fetches (an issuer
rotating its keys publishes the new one before it signs with it).

``ClientCredentials`` is the other side: a service (the DICOM node) asks the issuer's token
endpoint for its own token (OAuth2 client credentials) and presents it.

PyJWT does the JOSE work (signature, claims); this module chooses keys and says, in words a
client can act on, what is missing or wrong.
"""
from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Mapping

import jwt

ROLES = ("clinician", "operator", "auditor")
ALGORITHMS = {"RSA": "RS256", "EC": "ES256"}          # key type -> the one algorithm it may sign with


class Unauthorized(Exception):
    """No usable token (401): what is missing or wrong."""


class Forbidden(Exception):
    """A valid token without the role (403)."""

    def __init__(self, role: str):
        super().__init__(f"this needs the {role} role, which the token does not carry")
        self.role = role


@dataclass(frozen=True)
class IdentityConfig:
    """Where tokens come from and how roles are read from them (one place: flags or environment)."""
    issuer: str                              # the OpenID provider's issuer URL (discovery under it)
    audience: str                            # this service's client id / audience
    role_claim: str = "roles"                # dotted path into the claims, e.g. realm_access.roles
    role_names: Mapping[str, str] = field(default_factory=lambda: {r: r for r in ROLES})  # product role -> token's
    leeway_s: float = 30.0                   # clock skew allowed on exp and nbf
    min_refresh_s: float = 30.0              # an unknown key id refreshes the JWKS at most this often
    timeout_s: float = 5.0
    ca_file: str | None = None               # the issuer's CA, when it is not in the system store


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: frozenset[str]
    verified: bool = True                    # False only for a development gateway (--auth none)
    client: str | None = None                # the authorized party (azp), when the token names one

    def has(self, role: str) -> bool:
        return role in self.roles

    def require(self, role: str) -> None:
        if role not in self.roles:
            raise Forbidden(role)


DEVELOPER = Identity("local-developer", frozenset(ROLES), verified=False)


def _opener(ca_file: str | None):
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    return lambda url, timeout, data=None, headers=None: urllib.request.urlopen(
        urllib.request.Request(url, data=data, headers=headers or {}), timeout=timeout, context=context)


def _get_json(fetch, url: str, timeout: float) -> dict:
    with fetch(url, timeout) as response:
        return json.loads(response.read(1 << 20))


class TokenVerifier:
    """Verifies bearer tokens for one audience; safe to share between threads."""

    def __init__(self, config: IdentityConfig, fetch: Callable | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._fetch = fetch or _opener(config.ca_file)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks_uri: str | None = None
        self._refreshed_at: float | None = None
        self.refreshes = 0

    def _discover(self) -> str:
        if self._jwks_uri is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = _get_json(self._fetch, url, self.config.timeout_s)
            if doc.get("issuer") != self.config.issuer:
                raise Unauthorized("the identity provider's discovery document names another issuer")
            self._jwks_uri = doc["jwks_uri"]
        return self._jwks_uri

    def _refresh(self) -> None:
        jwks = _get_json(self._fetch, self._discover(), self.config.timeout_s)
        keys = {}
        for data in jwks.get("keys", []):
            if data.get("use", "sig") != "sig" or data.get("kty") not in ALGORITHMS or "kid" not in data:
                continue
            try:
                keys[data["kid"]] = jwt.PyJWK(data, ALGORITHMS[data["kty"]])
            except jwt.PyJWTError:
                continue                     # a key this service cannot use (another curve, say)
        self._keys, self._refreshed_at = keys, self._clock()
        self.refreshes += 1

    def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The published key ``kid``, refreshing the JWKS for an unknown one at most every
        ``min_refresh_s`` (one thread refreshes; the others wait for its answer)."""
        with self._lock:
            if kid not in self._keys:
                due = self._refreshed_at is None or self._clock() - self._refreshed_at >= self.config.min_refresh_s
                if due:
                    try:
                        self._refresh()
                    except (OSError, ValueError, KeyError) as e:
                        raise Unauthorized(f"the identity provider's keys cannot be fetched now ({type(e).__name__})"
                                           ) from None
            return self._keys.get(kid)

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the bearer token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS.values():
            raise Unauthorized(f"tokens signed with {alg!r} are not accepted (RS256 or ES256 only)")
        key = self.key(header.get("kid"))
        if key is None:
            raise Unauthorized("the token's key id is not one the issuer publishes")
        if ALGORITHMS[key.key_type] != alg:
            raise Unauthorized(f"the token says {alg}, but its key is for {ALGORITHMS[key.key_type]}")
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.config.audience,
                                issuer=self.config.issuer, leeway=self.config.leeway_s,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"the token is for another audience, not {self.config.audience}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token comes from another issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthorized(f"the token has no {e.claim} claim") from None
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the token is invalid ({type(e).__name__})") from None
        return Identity(str(claims["sub"]), self.roles_of(claims), True, claims.get("azp"))

    def roles_of(self, claims: dict) -> frozenset[str]:
        value = claims
        for part in self.config.role_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        granted = set(value.split() if isinstance(value, str) else value or [])
        return frozenset(role for role, name in self.config.role_names.items() if name in granted)


def add_arguments(parser, environ: Mapping[str, str]) -> None:
    """The identity provider's options, each also from the environment (a container's settings)."""
    group = parser.add_argument_group("identity (OpenID Connect)")
    group.add_argument("--oidc-issuer", default=environ.get("OIDC_ISSUER"),
                       help="the OpenID provider's issuer URL; tokens are verified against its published keys "
                            "(env OIDC_ISSUER)")
    group.add_argument("--oidc-audience", default=environ.get("OIDC_AUDIENCE"),
                       help="the audience tokens must be issued for: this service's client id (env OIDC_AUDIENCE)")
    group.add_argument("--oidc-role-claim", default=environ.get("OIDC_ROLE_CLAIM", "roles"),
                       help="the claim holding the roles, a dotted path such as realm_access.roles (env OIDC_ROLE_CLAIM)")
    group.add_argument("--oidc-roles", default=environ.get("OIDC_ROLES", ""),
                       help="the provider's names of the roles, e.g. clinician=radiology,operator=mlops,auditor=audit "
                            "(env OIDC_ROLES; default: the same names)")
    group.add_argument("--oidc-ca-file", default=environ.get("OIDC_CA_FILE"),
                       help="the provider's CA certificate, when it is not in the system store (env OIDC_CA_FILE)")


def add_door_arguments(parser, environ: Mapping[str, str], auth_env: str, what: str) -> None:
    """The options every door shares: whether it checks tokens (``--auth``, from ``auth_env``),
    the identity provider, the access audit and the PHI key its pseudonyms are made with."""
    from components.core import phi

    parser.add_argument("--auth", choices=("oidc", "none"), default=environ.get(auth_env, "oidc"),
                        help=f"oidc: {what}; none: no identity at all, for local development on loopback only "
                             f"(env {auth_env})")
    add_arguments(parser, environ)
    parser.add_argument("--audit-log", default=environ.get("AUDIT_LOG"),
                        help="the access audit: hash-chained JSON lines (env AUDIT_LOG; required with --auth oidc)")
    parser.add_argument("--phi-key-file", help=f"the PHI key that pseudonymizes studies and instances in the audit "
                                               f"(else env {phi.KEY_FILE_ENV} or {phi.KEY_ENV})")


def config_from(args) -> IdentityConfig:
    if not args.oidc_issuer or not args.oidc_audience:
        raise ValueError("give the identity provider: --oidc-issuer and --oidc-audience (or OIDC_ISSUER and "
                         "OIDC_AUDIENCE)")
    names = {role: role for role in ROLES}
    for pair in filter(None, (p.strip() for p in args.oidc_roles.split(","))):
        role, _, name = pair.partition("=")
        if role not in ROLES or not name:
            raise ValueError(f"--oidc-roles: {pair!r} is not ROLE=NAME with ROLE one of {', '.join(ROLES)}")
        names[role] = name
    return IdentityConfig(args.oidc_issuer, args.oidc_audience, args.oidc_role_claim, names, ca_file=args.oidc_ca_file)


def loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header, or why there is none."""
    if not authorization:
        raise Unauthorized("no bearer token: send Authorization: Bearer <token> from the identity provider")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header is not a bearer token")
    return token.strip()


class ClientCredentials:
    """A service's own access token (OAuth2 client credentials), fetched from the issuer's token
    endpoint and reused until shortly before it expires."""

    def __init__(self, issuer: str, client_id: str, secret: str, audience: str | None = None,
                 ca_file: str | None = None, timeout_s: float = 10.0, fetch: Callable | None = None):
        self.issuer, self.client_id, self._secret, self.audience = issuer, client_id, secret, audience
        self.timeout_s = timeout_s
        self._fetch = fetch or _opener(ca_file)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._until = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._until:
                doc = _get_json(self._fetch, self.issuer.rstrip("/") + "/.well-known/openid-configuration",
                                self.timeout_s)
                form = {"grant_type": "client_credentials", **({"audience": self.audience} if self.audience else {})}
                basic = base64.b64encode(f"{urllib.parse.quote(self.client_id)}:{urllib.parse.quote(self._secret)}"
                                         .encode()).decode()
                with self._fetch(doc["token_endpoint"], self.timeout_s, urllib.parse.urlencode(form).encode(),
                                 {"Authorization": f"Basic {basic}",
                                  "Content-Type": "application/x-www-form-urlencoded"}) as response:
                    answer = json.loads(response.read(1 << 20))
                self._token = answer["access_token"]
                self._until = time.time() + max(0.0, float(answer.get("expires_in", 300)) - 30.0)
            return self._token

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}
