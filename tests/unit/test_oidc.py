"""OIDC bearer tokens: validated with PyJWT against a JWKS served by a local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nubis.errors import Unauthorized
from nubis.security.authn import OidcVerifier

AUDIENCE = "nubis-archive"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return _key()


@pytest.fixture(scope="module")
def issuer(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A tiny identity provider: discovery document and JWKS."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    documents: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = documents.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {}).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_port}"
    documents["/.well-known/openid-configuration"] = {"issuer": base, "jwks_uri": base + "/jwks"}
    documents["/jwks"] = {"keys": [jwk]}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()


def _token(key: Any, issuer: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "u-42",
        "iat": now,
        "exp": now + 300,
        "groups": ["pacs-radiology", "staff"],
        "tenant": "clinic-a",
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def verifier(issuer: str) -> OidcVerifier:
    return OidcVerifier(
        issuer,
        AUDIENCE,
        algorithms=["RS256"],
        roles_claim="groups",
        role_map={"pacs-radiology": "radiologist"},
        tenant_claim="tenant",
        leeway_seconds=30,
    )


def test_valid_token_maps_roles_and_tenant(
    verifier: OidcVerifier, signing_key: rsa.RSAPrivateKey, issuer: str
) -> None:
    who = verifier.verify(_token(signing_key, issuer))
    assert who.id == "oidc:u-42"
    assert who.roles == frozenset({"radiologist"})
    assert who.tenant == "clinic-a"
    assert who.auth_method == "oidc"


def test_clock_skew_within_leeway_is_accepted(
    verifier: OidcVerifier, signing_key: rsa.RSAPrivateKey, issuer: str
) -> None:
    verifier.verify(_token(signing_key, issuer, exp=int(time.time()) - 10))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("wrong audience", "not valid"),
        ("wrong issuer", "not valid"),
        ("bad signature", "not valid"),
        ("no expiry", "not valid"),
        ("alg none", "not valid"),
        ("hmac with the public key", "not valid"),
    ],
)
def test_bad_tokens_are_refused(
    verifier: OidcVerifier, signing_key: rsa.RSAPrivateKey, issuer: str, case: str, reason: str
) -> None:
    now = int(time.time())
    if case == "expired":
        token = _token(signing_key, issuer, exp=now - 3600)
    elif case == "wrong audience":
        token = _token(signing_key, issuer, aud="someone-else")
    elif case == "wrong issuer":
        token = _token(signing_key, "https://evil.example")
    elif case == "bad signature":
        token = _token(_key(), issuer)  # same kid, another key
    elif case == "no expiry":
        claims = {"iss": issuer, "aud": AUDIENCE, "sub": "u-42"}
        token = jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": "k1"})
    elif case == "alg none":
        claims = {"iss": issuer, "aud": AUDIENCE, "sub": "u-42", "exp": now + 300}
        token = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    else:
        # The classic confusion attack: HS256 keyed with the RSA public key's PEM.
        from cryptography.hazmat.primitives import serialization

        pem = signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        claims = {"iss": issuer, "aud": AUDIENCE, "sub": "u-42", "exp": now + 300}
        header = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
        import base64
        import hashlib
        import hmac

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + b64(signature)
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    assert reason in caught.value.reason


def test_unmapped_groups_give_no_role(
    verifier: OidcVerifier, signing_key: rsa.RSAPrivateKey, issuer: str
) -> None:
    who = verifier.verify(_token(signing_key, issuer, groups=["staff"]))
    assert who.roles == frozenset()  # authenticated, but the policy allows nothing
