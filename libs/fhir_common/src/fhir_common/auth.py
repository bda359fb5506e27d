"""Bearer-token authentication and SMART on FHIR scope checks for every JoinedUp service.

Tokens are JWTs (RS256 or ES256) verified with PyJWT against a configured issuer and audience,
with the key taken from the issuer's JWKS endpoint or from a configured PEM public key. The
verified claims become a ``Principal``: the subject, its SMART scopes (v2 ``user/Patient.rs``
style, v1 ``user/Patient.read`` style understood too) and the JoinedUp claims ``org`` (ODS
code), ``role``, ``practitioner`` and ``feed``.

FastAPI routes use ``Depends(get_principal)`` or ``Depends(requires("Patient", "r"))``; every
failure is a ``FhirError`` (401 ``login`` for a missing or bad token, 403 ``forbidden`` for a
missing scope), so callers get an OperationOutcome. Nothing here ever lets a request through
when auth is not configured.

``LocalSigner`` mints tokens with a local RSA key; it exists for embedded mode and tests only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, Request
from jwt.algorithms import RSAAlgorithm

from fhir_common.errors import FhirError

__all__ = [
    "PERMISSIONS",
    "LocalSigner",
    "Principal",
    "Scope",
    "ScopeContext",
    "TokenVerifier",
    "get_principal",
    "parse_scope",
    "parse_scopes",
    "requires",
]

ScopeContext = Literal["system", "user", "patient"]

PERMISSIONS = "cruds"
"""SMART v2 permission letters, in their canonical order: create, read, update, delete, search."""

_CONTEXTS: frozenset[str] = frozenset({"system", "user", "patient"})
_V1_PERMISSIONS: Mapping[str, str] = MappingProxyType({"read": "rs", "write": "cud", "*": "cruds"})
# context "/" resource type "." permissions, optionally "?" query (SMART v2 granular scopes).
_SCOPE_RE = re.compile(
    r"^(?P<context>[a-z]+)/(?P<type>\*|[A-Z][A-Za-z]*)\.(?P<perms>[^?]+)(?:\?(?P<query>.*))?$"
)


@dataclass(frozen=True)
class Scope:
    """One SMART resource scope, e.g. ``user/Patient.rs``.

    ``query`` keeps a SMART v2 granular restriction (``patient/Observation.rs?category=...``).
    We do not evaluate those yet, so a scope with a query grants nothing (fail closed) rather
    than silently widening to every resource of its type.
    """

    context: ScopeContext
    resource_type: str
    permissions: frozenset[str]
    query: str = ""

    def grants(self, resource_type: str, permission: str) -> bool:
        return (
            not self.query
            and self.resource_type in ("*", resource_type)
            and permission in self.permissions
        )

    def __str__(self) -> str:
        perms = "".join(p for p in PERMISSIONS if p in self.permissions)
        text = f"{self.context}/{self.resource_type}.{perms}"
        return f"{text}?{self.query}" if self.query else text


def parse_scope(text: str) -> Scope | None:
    """Parse one SMART scope (v2 ``cruds`` letters or v1 ``read``/``write``/``*``).

    Returns None for anything that is not a resource scope: ``openid``, ``fhirUser``,
    ``launch``, ``launch/patient``, ``offline_access``, and junk.
    """
    match = _SCOPE_RE.match(text.strip())
    if match is None or match["context"] not in _CONTEXTS:
        return None
    perms_text = match["perms"]
    letters = _V1_PERMISSIONS.get(perms_text, perms_text)
    permissions = frozenset(letters)
    if not permissions <= frozenset(PERMISSIONS) or len(permissions) != len(letters):
        return None
    return Scope(
        context=cast(ScopeContext, match["context"]),
        resource_type=match["type"],
        permissions=permissions,
        query=match["query"] or "",
    )


def parse_scopes(claim: object) -> tuple[Scope, ...]:
    """Resource scopes from a ``scope`` claim: a space-separated string or a list of strings."""
    if claim is None:
        return ()
    if isinstance(claim, str):
        items = claim.split()
    elif isinstance(claim, list) and all(isinstance(i, str) for i in claim):
        items = [part for item in claim for part in item.split()]
    else:
        raise ValueError("scope claim must be a string or a list of strings")
    return tuple(s for s in (parse_scope(i) for i in items) if s is not None)


def _check_permission(permission: str) -> None:
    if len(permission) != 1 or permission not in PERMISSIONS:
        raise ValueError(f"permission must be one letter of {PERMISSIONS!r}, not {permission!r}")


@dataclass(frozen=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    subject: str
    scopes: tuple[Scope, ...] = ()
    org: str | None = None
    role: str | None = None
    practitioner: str | None = None
    feed: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def allows(self, resource_type: str, permission: str) -> bool:
        """True when any scope (any context) grants ``permission`` on ``resource_type``.

        Scope context is not enforced here: a ``patient/`` scope must still be narrowed to the
        launch patient's compartment by the caller.
        """
        _check_permission(permission)
        return any(s.grants(resource_type, permission) for s in self.scopes)

    def require(self, resource_type: str, permission: str) -> None:
        """Raise 403 ``forbidden`` unless ``allows(resource_type, permission)``."""
        if not self.allows(resource_type, permission):
            raise FhirError.single(
                403,
                "forbidden",
                f"token lacks scope {resource_type}.{permission} (needs e.g. "
                f"user/{resource_type}.{permission} or system/{resource_type}.{permission})",
            )


def _login_error(diagnostics: str) -> FhirError:
    return FhirError.single(401, "login", diagnostics)


_MAX_TOKEN_LENGTH = 16_384

_ALGORITHMS: frozenset[str] = frozenset({"RS256", "ES256"})


def _algorithms_for_public_key(key: object) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ["ES256"]
    raise ValueError("public key must be RSA (RS256) or EC P-256 (ES256)")


_SigningKey = tuple[Any, list[str]]  # (key for jwt.decode, the algorithms that key may verify)


class TokenVerifier:
    """Verifies bearer JWTs and turns them into ``Principal``s.

    ``exp``, ``iss``, ``aud`` and ``sub`` are required; ``iss`` and ``aud`` must match the
    configured values. Keys come from ``jwks_url`` (fetched with ``jwt.PyJWKClient`` and cached),
    from ``public_key_pem``, or both (a key from the JWKS matching the token's ``kid`` is tried
    first, then the PEM key). Only RS256 and ES256 are accepted, and the algorithm is bound to
    the key, never taken from the token alone.
    """

    LEEWAY_SECONDS = 30
    JWKS_CACHE_SECONDS = 300
    JWKS_TIMEOUT_SECONDS = 5.0

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        public_key_pem: str | None = None,
        jwks_url: str | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("TokenVerifier needs an issuer and an audience")
        if not public_key_pem and not jwks_url:
            raise ValueError("TokenVerifier needs public_key_pem or jwks_url (or both)")
        self.issuer = issuer
        self.audience = audience
        self._static_key: _SigningKey | None = None
        if public_key_pem:
            try:
                key = serialization.load_pem_public_key(public_key_pem.encode())
            except ValueError as exc:
                raise ValueError(f"bad public_key_pem: {exc}") from exc
            self._static_key = (key, _algorithms_for_public_key(key))
        self._jwks: jwt.PyJWKClient | None = None
        if jwks_url:
            try:
                self._jwks = jwt.PyJWKClient(
                    jwks_url,
                    cache_jwk_set=True,
                    lifespan=self.JWKS_CACHE_SECONDS,
                    timeout=self.JWKS_TIMEOUT_SECONDS,
                )
            except jwt.PyJWKClientError as exc:
                raise ValueError(f"bad jwks_url: {exc}") from exc

    def verify(self, token: str) -> Principal:
        """Verify ``token`` and return its principal; any failure is a 401 ``FhirError``.

        Diagnostics say what is wrong but never include the token. A JWKS endpoint that cannot
        be reached is a 503 (our problem, not the caller's; the request is still refused).
        """
        if not token or len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise _login_error("bearer token is malformed (not a compact JWT)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _login_error("bearer token is malformed (unreadable JWT header)") from None
        if header.get("alg") not in _ALGORITHMS:
            raise _login_error("bearer token algorithm is not accepted (RS256 or ES256 only)")
        candidates = self._candidate_keys(header.get("kid"))
        claims: dict[str, Any] | None = None
        last_error: jwt.PyJWTError | None = None
        for key, algorithms in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.LEEWAY_SECONDS,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
                break
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError) as exc:
                last_error = exc  # maybe the next key
            except jwt.PyJWTError as exc:
                raise _login_error(_describe(exc)) from None
        if claims is None:
            raise _login_error(_describe(last_error) if last_error else "no key to verify token")
        return _principal_from_claims(claims)

    def _candidate_keys(self, kid: object) -> list[_SigningKey]:
        keys: list[_SigningKey] = []
        if self._jwks is not None and isinstance(kid, str) and kid:
            try:
                jwk = self._jwks.get_signing_key(kid)
            except jwt.PyJWKClientConnectionError:
                raise FhirError.single(
                    503, "transient", "cannot fetch the token issuer's signing keys (JWKS)"
                ) from None
            except (jwt.PyJWKClientError, jwt.PyJWKSetError):
                if self._static_key is None:
                    raise _login_error(
                        "bearer token key id (kid) is not in the issuer's key set"
                    ) from None
            else:
                if jwk.algorithm_name not in _ALGORITHMS:
                    raise _login_error("bearer token signing key uses an unaccepted algorithm")
                keys.append((jwk, [jwk.algorithm_name]))
        elif self._static_key is None:
            raise _login_error("bearer token has no key id (kid) header")
        if self._static_key is not None:
            keys.append(self._static_key)
        return keys


def _describe(exc: jwt.PyJWTError) -> str:
    """A diagnostic for a PyJWT failure, from its type only (messages may quote the token)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "bearer token has expired"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bearer token signature is not valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "bearer token was not issued for this audience (aud)"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "bearer token issuer (iss) is not trusted"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"bearer token is missing the required '{exc.claim}' claim"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "bearer token is not yet valid (nbf/iat in the future)"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "bearer token algorithm does not match the verifying key"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "bearer token has an invalid 'iat' claim"
    if isinstance(exc, jwt.DecodeError):
        return "bearer token is malformed"
    if isinstance(exc, jwt.InvalidTokenError):
        return "bearer token has invalid claims"
    return "bearer token could not be verified"


def _optional_str_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _login_error(f"bearer token claim '{name}' must be a string")
    return value


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    try:
        scopes = parse_scopes(claims.get("scope", claims.get("scp")))
    except ValueError:
        raise _login_error("bearer token 'scope' claim is malformed") from None
    return Principal(
        subject=str(claims["sub"]),
        scopes=scopes,
        org=_optional_str_claim(claims, "org"),
        role=_optional_str_claim(claims, "role"),
        practitioner=_optional_str_claim(claims, "practitioner"),
        feed=_optional_str_claim(claims, "feed"),
        claims=MappingProxyType(claims),
    )


# --- FastAPI integration -------------------------------------------------------------------


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise _login_error("missing Authorization: Bearer token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _login_error("Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise _login_error("Authorization header has an empty Bearer token")
    return token


def get_principal(request: Request) -> Principal:
    """FastAPI dependency: verify the request's bearer token with ``app.state.token_verifier``.

    Sync on purpose: FastAPI runs it in the threadpool, so a (cached) JWKS fetch never blocks the
    event loop. Stores the principal on ``request.state.principal``.
    """
    verifier = getattr(request.app.state, "token_verifier", None)
    if not isinstance(verifier, TokenVerifier):
        raise FhirError.single(500, "exception", "auth not configured: no token verifier")
    principal = verifier.verify(_bearer_token(request))
    request.state.principal = principal
    return principal


def requires(resource_type: str, permission: str) -> Callable[..., Principal]:
    """A dependency demanding a scope: ``Depends(requires("Patient", "r"))``.

    Returns the principal, so it can be used as a parameter or in ``dependencies=[...]``.
    """
    _check_permission(permission)

    def dependency(principal: Principal = Depends(get_principal)) -> Principal:
        principal.require(resource_type, permission)
        return principal

    dependency.__name__ = f"requires_{resource_type}_{permission}"
    return dependency


# --- local signing (embedded mode and tests only) ----------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class LocalSigner:
    """An RSA 2048 signing key on local disk that mints RS256 tokens.

    For embedded mode and tests only; production tokens come from a real authorisation server.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._private_key = private_key
        public_jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        # RFC 7638 JWK thumbprint: SHA-256 of the required members, sorted, no whitespace.
        required = {k: public_jwk[k] for k in ("e", "kty", "n")}
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
        self.kid = _b64url(hashlib.sha256(canonical.encode()).digest())
        self._public_jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    @classmethod
    def generate(cls) -> LocalSigner:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def load_or_create(cls, path: Path) -> LocalSigner:
        """Load the PEM private key at ``path``, or generate one and save it (mode 0600)."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            signer = cls.generate()
            pem = signer._private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # mkstemp creates the file 0600; link() publishes it whole and fails if another
            # process got there first, in which case we use theirs.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return cls(key)

    def public_key_pem(self) -> str:
        return (
            self._private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK Set, for a ``/.well-known/jwks.json`` style endpoint."""
        return {"keys": [dict(self._public_jwk)]}

    def mint(
        self,
        *,
        subject: str,
        scopes: list[str],
        issuer: str,
        audience: str,
        ttl_seconds: int = 3600,
        org: str | None = None,
        role: str | None = None,
        practitioner: str | None = None,
        feed: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """An RS256 JWT with ``kid`` header; ``extra`` claims are added last (and may override)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": str(uuid.uuid4()),
            "scope": " ".join(scopes),
        }
        optional = {"org": org, "role": role, "practitioner": practitioner, "feed": feed}
        claims.update({k: v for k, v in optional.items() if v is not None})
        if extra:
            claims.update(extra)
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.kid})
