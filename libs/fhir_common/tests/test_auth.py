from __future__ import annotations

import base64
import json
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI, Request

from fhir_common.auth import (
    LocalSigner,
    Principal,
    Scope,
    TokenVerifier,
    get_principal,
    parse_scope,
    requires,
)
from fhir_common.errors import FhirError, install_error_handlers

ISS = "https://auth.joinedup.test"
AUD = "https://joinedup.test/record"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> LocalSigner:
    return LocalSigner.load_or_create(tmp_path_factory.mktemp("keys") / "signing.pem")


@pytest.fixture(scope="module")
def other_signer() -> LocalSigner:
    return LocalSigner.generate()


@pytest.fixture(scope="module")
def verifier(signer: LocalSigner) -> TokenVerifier:
    return TokenVerifier(issuer=ISS, audience=AUD, public_key_pem=signer.public_key_pem())


def mint(signer: LocalSigner, scopes: list[str] | None = None, **kwargs: Any) -> str:
    kwargs.setdefault("subject", "client-1")
    kwargs.setdefault("issuer", ISS)
    kwargs.setdefault("audience", AUD)
    return signer.mint(scopes=scopes if scopes is not None else ["system/*.cruds"], **kwargs)


def rejected(verifier: TokenVerifier, token: str) -> FhirError:
    with pytest.raises(FhirError) as info:
        verifier.verify(token)
    err = info.value
    assert err.status == 401
    assert err.issues[0].code == "login"
    assert token not in err.issues[0].diagnostics
    return err


def diag(err: FhirError) -> str:
    return err.issues[0].diagnostics


# --- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("system/*.cruds", Scope("system", "*", frozenset("cruds"))),
        ("user/Patient.rs", Scope("user", "Patient", frozenset("rs"))),
        ("patient/Observation.r", Scope("patient", "Observation", frozenset("r"))),
        ("user/Task.cu", Scope("user", "Task", frozenset("cu"))),
        ("user/Patient.read", Scope("user", "Patient", frozenset("rs"))),
        ("system/Encounter.write", Scope("system", "Encounter", frozenset("cud"))),
        ("user/*.*", Scope("user", "*", frozenset("cruds"))),
        ("patient/*.read", Scope("patient", "*", frozenset("rs"))),
        (
            "patient/Observation.rs?category=laboratory",
            Scope("patient", "Observation", frozenset("rs"), query="category=laboratory"),
        ),
        ("openid", None),
        ("fhirUser", None),
        ("launch", None),
        ("launch/patient", None),
        ("offline_access", None),
        ("online_access", None),
        ("", None),
        ("user/Patient", None),
        ("user/Patient.", None),
        ("user/Patient.x", None),
        ("user/Patient.rr", None),
        ("user/Patient.readwrite", None),
        ("admin/Patient.rs", None),
        ("User/Patient.rs", None),
        ("user/patient.rs", None),
        ("user/.rs", None),
        ("user/Pat-ient.rs", None),
        ("?", None),
        ("user/Patient.rs extra", None),
    ],
)
def test_parse_scope(text: str, expected: Scope | None) -> None:
    assert parse_scope(text) == expected


def test_scope_str_round_trips() -> None:
    for text in ("system/*.cruds", "user/Patient.rs", "patient/Observation.rs?category=x"):
        scope = parse_scope(text)
        assert scope is not None
        assert str(scope) == text
    assert str(parse_scope("user/Patient.read")) == "user/Patient.rs"


def test_principal_allows_and_require() -> None:
    p = Principal(
        subject="u",
        scopes=(
            Scope("user", "Patient", frozenset("rs")),
            Scope("patient", "Observation", frozenset("r")),
        ),
    )
    assert p.allows("Patient", "r")
    assert p.allows("Patient", "s")
    assert not p.allows("Patient", "u")
    assert p.allows("Observation", "r")
    assert not p.allows("Encounter", "r")
    p.require("Patient", "r")
    with pytest.raises(FhirError) as info:
        p.require("Encounter", "r")
    assert info.value.status == 403
    assert info.value.issues[0].code == "forbidden"
    assert "Encounter.r" in diag(info.value)
    with pytest.raises(ValueError, match="permission"):
        p.allows("Patient", "read")

    wildcard = Principal(subject="s", scopes=(Scope("system", "*", frozenset("cruds")),))
    assert all(wildcard.allows("CarePlan", letter) for letter in "cruds")
    assert not Principal(subject="nobody").allows("Patient", "r")


def test_query_restricted_scope_grants_nothing_yet() -> None:
    scope = parse_scope("patient/Observation.rs?category=laboratory")
    assert scope is not None
    assert not Principal(subject="u", scopes=(scope,)).allows("Observation", "r")


# --- verifying -------------------------------------------------------------------------------


def test_mint_and_verify(signer: LocalSigner, verifier: TokenVerifier) -> None:
    token = mint(
        signer,
        ["openid", "fhirUser", "user/Patient.rs", "user/Observation.read"],
        subject="dr-jones",
        org="RXH",
        role="doctor",
        practitioner="Practitioner/123",
        extra={"name": "Dr Jones"},
    )
    assert jwt.get_unverified_header(token)["kid"] == signer.kid
    p = verifier.verify(token)
    assert p.subject == "dr-jones"
    assert p.scopes == (
        Scope("user", "Patient", frozenset("rs")),
        Scope("user", "Observation", frozenset("rs")),
    )
    assert (p.org, p.role, p.practitioner, p.feed) == ("RXH", "doctor", "Practitioner/123", None)
    assert p.claims["name"] == "Dr Jones"
    assert p.allows("Patient", "r")
    assert not p.allows("Patient", "c")


def test_feed_claim_and_scope_as_list(signer: LocalSigner, verifier: TokenVerifier) -> None:
    token = mint(signer, [], feed="gp-emis-a", extra={"scope": ["system/Bundle.c", "openid"]})
    p = verifier.verify(token)
    assert p.feed == "gp-emis-a"
    assert p.scopes == (Scope("system", "Bundle", frozenset("c")),)


def test_load_or_create_persists_key_0600(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "key.pem"
    first = LocalSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]
    second = LocalSigner.load_or_create(path)
    assert second.kid == first.kid
    assert second.public_key_pem() == first.public_key_pem()
    token = mint(first)
    v = TokenVerifier(issuer=ISS, audience=AUD, public_key_pem=second.public_key_pem())
    assert v.verify(token).subject == "client-1"


def test_load_or_create_rejects_non_rsa(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="RSA"):
        LocalSigner.load_or_create(path)


def test_jwks_shape(signer: LocalSigner) -> None:
    keys = signer.jwks()["keys"]
    assert len(keys) == 1
    assert keys[0]["kid"] == signer.kid
    assert keys[0]["kty"] == "RSA"
    assert keys[0]["alg"] == "RS256"
    assert "d" not in keys[0]


def test_expired(signer: LocalSigner, verifier: TokenVerifier) -> None:
    err = rejected(verifier, mint(signer, ttl_seconds=-120))
    assert "expired" in diag(err)


def test_within_leeway_is_accepted(signer: LocalSigner, verifier: TokenVerifier) -> None:
    verifier.verify(mint(signer, ttl_seconds=-5))


def test_wrong_audience(signer: LocalSigner, verifier: TokenVerifier) -> None:
    err = rejected(verifier, mint(signer, audience="https://elsewhere.test"))
    assert "audience" in diag(err)


def test_wrong_issuer(signer: LocalSigner, verifier: TokenVerifier) -> None:
    err = rejected(verifier, mint(signer, issuer="https://evil.test"))
    assert "issuer" in diag(err)


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_missing_required_claim(signer: LocalSigner, verifier: TokenVerifier, claim: str) -> None:
    token = mint(signer)
    claims = jwt.decode(token, options={"verify_signature": False})
    del claims[claim]
    resigned = jwt.encode(
        claims, signer._private_key, algorithm="RS256", headers={"kid": signer.kid}
    )
    err = rejected(verifier, resigned)
    assert f"'{claim}'" in diag(err)


def test_signed_by_another_key(other_signer: LocalSigner, verifier: TokenVerifier) -> None:
    err = rejected(verifier, mint(other_signer))
    assert "signature" in diag(err)


def test_tampered_payload(signer: LocalSigner, verifier: TokenVerifier) -> None:
    header, payload, signature = mint(signer, ["user/Patient.r"]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    err = rejected(verifier, f"{header}.{forged}.{signature}")
    assert "signature" in diag(err)


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "a.b", "x" * 20_000, "..."])
def test_malformed(verifier: TokenVerifier, token: str) -> None:
    assert "malformed" in diag(rejected(verifier, token))


def test_unsigned_token(verifier: TokenVerifier) -> None:
    assert "signature" in diag(rejected(verifier, "eyJhbGciOiJSUzI1NiJ9.e30."))


def test_empty_token(verifier: TokenVerifier) -> None:
    with pytest.raises(FhirError) as info:
        verifier.verify("")
    assert info.value.status == 401


def test_alg_none_and_hmac_rejected(signer: LocalSigner, verifier: TokenVerifier) -> None:
    claims = jwt.decode(mint(signer), options={"verify_signature": False})
    err = rejected(verifier, jwt.encode(claims, None, algorithm="none"))
    assert "algorithm" in diag(err)
    err = rejected(verifier, jwt.encode(claims, "s" * 32, algorithm="HS256"))
    assert "algorithm" in diag(err)


def test_es256_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    v = TokenVerifier(issuer=ISS, audience=AUD, public_key_pem=pem)
    claims = {"iss": ISS, "aud": AUD, "sub": "es", "exp": 4_000_000_000, "scope": "user/*.rs"}
    p = v.verify(jwt.encode(claims, key, algorithm="ES256"))
    assert p.subject == "es"
    assert p.allows("Patient", "s")
    # an RS256 token cannot be verified by an EC key
    err = rejected(v, LocalSigner.generate().mint(subject="x", scopes=[], issuer=ISS, audience=AUD))
    assert "algorithm" in diag(err)


def test_verifier_constructor_validation(signer: LocalSigner) -> None:
    with pytest.raises(ValueError, match="public_key_pem or jwks_url"):
        TokenVerifier(issuer=ISS, audience=AUD)
    with pytest.raises(ValueError, match="bad public_key_pem"):
        TokenVerifier(issuer=ISS, audience=AUD, public_key_pem="not a pem")
    with pytest.raises(ValueError, match="bad jwks_url"):
        TokenVerifier(issuer=ISS, audience=AUD, jwks_url="file:///etc/passwd")
    with pytest.raises(ValueError, match="issuer and an audience"):
        TokenVerifier(issuer="", audience=AUD, public_key_pem=signer.public_key_pem())


def test_bad_claim_types(signer: LocalSigner, verifier: TokenVerifier) -> None:
    assert "scope" in diag(rejected(verifier, mint(signer, extra={"scope": 42})))
    assert "org" in diag(rejected(verifier, mint(signer, extra={"org": ["A", "B"]})))


# --- JWKS ------------------------------------------------------------------------------------


class _JwksServer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def jwks_server(signer: LocalSigner) -> Iterator[_JwksServer]:
    server = _JwksServer(signer.jwks())
    yield server
    server.close()


def test_verify_through_jwks(signer: LocalSigner, jwks_server: _JwksServer) -> None:
    v = TokenVerifier(issuer=ISS, audience=AUD, jwks_url=jwks_server.url)
    p = v.verify(mint(signer, ["user/Patient.rs"], subject="via-jwks"))
    assert p.subject == "via-jwks"
    assert p.allows("Patient", "r")
    v.verify(mint(signer))
    assert jwks_server.hits == 1  # cached


def test_jwks_rejects_other_key_and_no_kid(
    signer: LocalSigner, other_signer: LocalSigner, jwks_server: _JwksServer
) -> None:
    v = TokenVerifier(issuer=ISS, audience=AUD, jwks_url=jwks_server.url)
    assert "kid" in diag(rejected(v, mint(other_signer)))
    claims = jwt.decode(mint(signer), options={"verify_signature": False})
    no_kid = jwt.encode(claims, signer._private_key, algorithm="RS256")
    assert "kid" in diag(rejected(v, no_kid))
    # a token claiming our kid but signed by another key
    forged = jwt.encode(
        claims, other_signer._private_key, algorithm="RS256", headers={"kid": signer.kid}
    )
    assert "signature" in diag(rejected(v, forged))
    assert "expired" in diag(rejected(v, mint(signer, ttl_seconds=-300)))


def test_jwks_and_pem_together(
    signer: LocalSigner, other_signer: LocalSigner, jwks_server: _JwksServer
) -> None:
    v = TokenVerifier(
        issuer=ISS,
        audience=AUD,
        jwks_url=jwks_server.url,
        public_key_pem=other_signer.public_key_pem(),
    )
    assert v.verify(mint(signer, subject="a")).subject == "a"
    assert v.verify(mint(other_signer, subject="b")).subject == "b"
    assert "signature" in diag(rejected(v, mint(LocalSigner.generate())))


def test_jwks_unreachable_is_503_not_a_pass(signer: LocalSigner) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = TokenVerifier(issuer=ISS, audience=AUD, jwks_url=f"http://127.0.0.1:{port}/jwks")
    with pytest.raises(FhirError) as info:
        v.verify(mint(signer))
    assert info.value.status == 503


# --- FastAPI ---------------------------------------------------------------------------------


def make_app(verifier: TokenVerifier | None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    if verifier is not None:
        app.state.token_verifier = verifier

    @app.get("/fhir/Patient/{pid}")
    def read_patient(pid: str, principal: Principal = Depends(requires("Patient", "r"))) -> Any:
        return {"resourceType": "Patient", "id": pid, "by": principal.subject}

    @app.get("/fhir/Task", dependencies=[Depends(requires("Task", "s"))])
    def search_tasks(request: Request) -> Any:
        return {"subject": request.state.principal.subject}

    @app.get("/whoami")
    def whoami(principal: Principal = Depends(get_principal)) -> Any:
        return {"sub": principal.subject, "org": principal.org}

    return app


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def client(verifier: TokenVerifier) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(make_app(verifier)) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_header_is_401_outcome(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Patient/1")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "login"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token"])
async def test_not_bearer_is_401(client: httpx.AsyncClient, header: str) -> None:
    r = await client.get("/fhir/Patient/1", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["issue"][0]["code"] == "login"


async def test_invalid_token_is_401(client: httpx.AsyncClient, other_signer: LocalSigner) -> None:
    r = await client.get("/fhir/Patient/1", headers=bearer(mint(other_signer)))
    assert r.status_code == 401
    assert "signature" in r.json()["issue"][0]["diagnostics"]


async def test_wrong_scope_is_403(client: httpx.AsyncClient, signer: LocalSigner) -> None:
    r = await client.get("/fhir/Patient/1", headers=bearer(mint(signer, ["user/Observation.rs"])))
    assert r.status_code == 403
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "forbidden"
    assert "Patient.r" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("scope", ["user/Patient.rs", "system/*.cruds", "user/Patient.read"])
async def test_granting_scope_is_200(
    client: httpx.AsyncClient, signer: LocalSigner, scope: str
) -> None:
    r = await client.get("/fhir/Patient/7", headers=bearer(mint(signer, [scope], subject="dr")))
    assert r.status_code == 200
    assert r.json() == {"resourceType": "Patient", "id": "7", "by": "dr"}


async def test_requires_in_route_dependencies(
    client: httpx.AsyncClient, signer: LocalSigner
) -> None:
    ok = await client.get("/fhir/Task", headers=bearer(mint(signer, ["user/Task.s"], subject="n")))
    assert ok.status_code == 200
    assert ok.json() == {"subject": "n"}
    denied = await client.get("/fhir/Task", headers=bearer(mint(signer, ["user/Task.r"])))
    assert denied.status_code == 403


async def test_get_principal_alone(client: httpx.AsyncClient, signer: LocalSigner) -> None:
    r = await client.get("/whoami", headers=bearer(mint(signer, [], subject="s", org="RXH")))
    assert r.json() == {"sub": "s", "org": "RXH"}
    assert (await client.get("/whoami")).status_code == 401


async def test_unconfigured_auth_refuses(signer: LocalSigner) -> None:
    async with asgi_client(make_app(None)) as c:
        r = await c.get("/fhir/Patient/1", headers=bearer(mint(signer)))
    assert r.status_code == 500
    assert "auth not configured" in r.json()["issue"][0]["diagnostics"]


async def test_mounted_sub_app_uses_its_own_verifier(
    signer: LocalSigner, verifier: TokenVerifier
) -> None:
    parent = FastAPI()
    parent.mount("/record", make_app(verifier))
    async with asgi_client(parent) as c:
        ok = await c.get("/record/fhir/Patient/1", headers=bearer(mint(signer, ["user/Patient.r"])))
        assert ok.status_code == 200
        assert (await c.get("/record/fhir/Patient/1")).status_code == 401
