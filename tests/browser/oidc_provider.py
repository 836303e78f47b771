"""A minimal OpenID Connect provider for the browser sign-in tests: discovery, JWKS, an
authorization endpoint that approves one configured user at once (its page navigates back
to the client, as a provider's page does after the user approves), and a token endpoint that
checks the client's secret, the redirect URI and the PKCE verifier (RFC 7636, S256) before it
issues an RS256 ID token (with the nonce) and access token.

It records what it was sent, so tests can check the archive asked as the standard says.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    audience: str
    user: dict[str, Any]
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_refusals: list[str] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="test-key", use="sig", alg="RS256")
        return {"keys": [jwk]}

    def token(self, audience: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": audience, "iat": now, "exp": now + 300, **self.user}
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "test-key"})


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self._json(
                    200,
                    {
                        "issuer": provider.issuer,
                        "authorization_endpoint": provider.issuer + "/authorize",
                        "token_endpoint": provider.issuer + "/token",
                        "jwks_uri": provider.issuer + "/jwks",
                    },
                )
            elif url.path == "/jwks":
                self._json(200, provider.jwks())
            elif url.path == "/authorize":
                self._authorize({k: v[0] for k, v in parse_qs(url.query).items()})
            else:
                self._json(404, {"error": "not_found"})

        def _authorize(self, query: dict[str, str]) -> None:
            provider.authorize_requests.append(query)
            if (
                query.get("client_id") != provider.client_id
                or query.get("code_challenge_method") != "S256"
            ):
                self._json(400, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(16)
            provider.codes[code] = query
            target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            # As a real provider's page after the user approves: the navigation back to the
            # client starts on the provider's site (not a redirect of the client's navigation).
            page = (
                f'<!doctype html><title>Approved</title><a id="back" href="{html.escape(target)}">'
                "Back</a><script>document.getElementById('back').click()</script>"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("content-length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            refusal = self._check(form)
            if refusal:
                provider.token_refusals.append(refusal)
                self._json(400, {"error": refusal})
                return
            asked = provider.codes.pop(form["code"])
            self._json(
                200,
                {
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": provider.token(provider.client_id, nonce=asked["nonce"]),
                    "access_token": provider.token(provider.audience),
                },
            )

        def _check(self, form: dict[str, str]) -> str | None:
            expected = base64.b64encode(
                f"{provider.client_id}:{provider.client_secret}".encode()
            ).decode()
            if self.headers.get("authorization") != f"Basic {expected}":
                return "invalid_client"
            asked = provider.codes.get(form.get("code", ""))
            if asked is None or form.get("grant_type") != "authorization_code":
                return "invalid_grant"
            if form.get("redirect_uri") != asked["redirect_uri"]:
                return "invalid_grant"
            challenge = (
                base64.urlsafe_b64encode(
                    hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                )
                .rstrip(b"=")
                .decode()
            )
            if challenge != asked["code_challenge"]:
                return "invalid_grant"
            return None

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def running_provider(
    *, host: str, client_id: str, client_secret: str, audience: str, user: dict[str, Any]
) -> Iterator[Provider]:
    """The provider on a free loopback port, its issuer URL named with ``host``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: None)  # type: ignore[arg-type]
    provider = Provider(
        f"http://{host}:{server.server_port}", client_id, client_secret, audience, user
    )
    server.RequestHandlerClass = _handler(provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
