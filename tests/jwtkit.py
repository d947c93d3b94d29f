"""Keys, tokens and a real JWKS server for the JWT tests.

- :class:`SigningKey`: an RSA, EC, Ed25519 or HMAC key with its ``kid`` and ``alg``; ``jwk()`` is the
  public JWK an issuer publishes (``private_jwk()`` the whole key, to test that it is refused), and
  ``sign(claims, headers=...)`` mints a token with PyJWT.
- :func:`claims`: a valid claim set around a given ``now`` (``exp`` in 5 minutes, ``iat`` = ``now``).
- :func:`assemble` builds a token from raw parts without PyJWT, for what PyJWT refuses to produce (an
  ``alg: none`` token, a token HMAC-signed with an RSA public key PEM, broken JSON or base64).
- :class:`JwksServer`: a threaded HTTP server on 127.0.0.1 that serves ``keys`` as a JWKS with an optional
  ``Cache-Control``; a test swaps the keys (rotation), sets ``status``/``body``/``send_length`` (a broken
  issuer) or ``delay`` (a slow one), or calls :meth:`JwksServer.close` (the issuer is down: connections
  are refused). ``requests`` counts the GETs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: A fixed "wall-clock" time for the tests (2023-11-14).
NOW = 1_700_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class SigningKey:
    """A private key (or HMAC secret) to mint tokens with, and the JWK to publish for it."""

    def __init__(self, key: Any, alg: str, kid: str | None) -> None:
        self.key = key
        self.alg = alg
        self.kid = kid

    def jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        """The public JWK (for HMAC: the secret, as an ``oct`` key)."""
        if isinstance(self.key, bytes):
            data: dict[str, Any] = {"kty": "oct", "k": b64url(self.key)}
        else:
            data = json.loads(pyjwt.get_algorithm_by_name(self.alg).to_jwk(self.key.public_key()))
        if self.kid is not None:
            data["kid"] = self.kid
        if with_alg:
            data["alg"] = self.alg
        data.update(extra)
        return data

    def private_jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(pyjwt.get_algorithm_by_name(self.alg).to_jwk(self.key))
        if self.kid is not None:
            data["kid"] = self.kid
        data["alg"] = self.alg
        return data

    def public_pem(self) -> bytes:
        return bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(
        self, payload: dict[str, Any], *, headers: dict[str, Any] | None = None, alg: str | None = None
    ) -> str:
        head = dict(headers or {})
        if self.kid is not None and "kid" not in head:
            head["kid"] = self.kid
        head = {name: value for name, value in head.items() if value is not None}  # {"kid": None}: none
        return pyjwt.encode(payload, self.key, algorithm=alg or self.alg, headers=head)


def rsa_key(kid: str | None = "rsa-1", alg: str = "RS256") -> SigningKey:
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), alg, kid)


def ec_key(kid: str | None = "ec-1", alg: str = "ES256") -> SigningKey:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
    return SigningKey(ec.generate_private_key(curve), alg, kid)


def ed_key(kid: str | None = "ed-1") -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid)


def hmac_key(secret: bytes = b"s" * 48 + b"-hmac-secret-for-tests", kid: str | None = None) -> SigningKey:
    return SigningKey(secret, "HS256", kid)


def claims(now: float = NOW, ttl: float = 300, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sub": "alice",
        "iss": "https://issuer.test",
        "aud": "orders-api",
        "iat": int(now),
        "exp": int(now + ttl),
    }
    data.update(extra)
    return {k: v for k, v in data.items() if v is not None}


def assemble(
    header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes | str = b""
) -> str:
    """A token from parts: dicts are JSON-encoded, str segments are used as they are (already base64)."""
    head = header if isinstance(header, str) else b64json(header)
    body = payload if isinstance(payload, str) else b64json(payload)
    sig = signature if isinstance(signature, str) else b64url(signature)
    return f"{head}.{body}.{sig}"


def hmac_sign(header: dict[str, Any] | str, payload: dict[str, Any] | str, secret: bytes) -> str:
    """A token HMAC-SHA256-signed by hand with ``secret`` (PyJWT refuses a PEM as an HMAC secret)."""
    head = header if isinstance(header, str) else b64json(header)
    body = payload if isinstance(payload, str) else b64json(payload)
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return assemble(head, body, signature)


def jwks(*keys: SigningKey | dict[str, Any]) -> dict[str, Any]:
    return {"keys": [k.jwk() if isinstance(k, SigningKey) else k for k in keys]}


class JwksServer:
    """A real JWKS endpoint on 127.0.0.1 (see the module docstring). Use as a context manager."""

    def __init__(self, *keys: SigningKey | dict[str, Any], cache_control: str | None = "max-age=300") -> None:
        self.document: dict[str, Any] = jwks(*keys)
        self.cache_control = cache_control
        self.status = 200
        self.body: bytes | None = None  # served instead of the document when set
        self.send_length = True  # False: no Content-Length, the body ends when the connection closes
        self.requests = 0
        self.delay = 0.0  # seconds each answer is held back (an issuer slow to answer)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if server.delay:
                    time.sleep(server.delay)
                with server._lock:
                    server.requests += 1
                    body = server.body if server.body is not None else json.dumps(server.document).encode()
                    status, cache_control, send_length = (
                        server.status,
                        server.cache_control,
                        server.send_length,
                    )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if send_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.close_connection = True
                if cache_control is not None:
                    self.send_header("Cache-Control", cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="jwks-server", daemon=True
        )
        self._thread.start()
        self._closed = False

    def set_keys(self, *keys: SigningKey | dict[str, Any]) -> None:
        with self._lock:
            self.document = jwks(*keys)

    def close(self) -> None:
        """Stop listening: from now on connections to :attr:`url` are refused."""
        if not self._closed:
            self._closed = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
