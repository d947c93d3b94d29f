"""TLS termination in the compiled table: a route's certificates, resolved from its Secrets and checked.

``GatewayRoute.spec.tls`` names Secrets of type ``kubernetes.io/tls`` in the route's namespace (keys
``tls.crt``: the PEM chain, leaf first; ``tls.key``: the PEM private key). :func:`tls_policy` resolves
them (pure: the Secrets come in the bundle, ``now`` is injected) and checks each with ``cryptography``:
the chain parses, the key parses and matches the leaf's public key, and the leaf is valid at ``now``.

- A problem (reasons :data:`SECRET_NOT_FOUND`, :data:`KEY_NOT_FOUND`, :data:`INVALID_CERTIFICATE`) makes
  ``ResolvedRefs`` False; the route's TLS then carries ``error`` and no certificate, so the data plane
  serves none of it (no handshake for its hosts, no redirect) while plain HTTP keeps working.
- A leaf that expires within :data:`EXPIRY_WARNING` of ``now`` is still served; ``ResolvedRefs`` stays
  True with the reason :data:`CERTIFICATE_EXPIRING` and a message naming the Secret and the date.

Where the certificates live: on the route (``CompiledRoute.tls``), not in a table-level list. A route
then carries everything it needs, so the content hash, the per-route digests and ``PATCH /table`` deltas
(which send changed routes only) cover a rotated certificate with no new mechanism; the cost is that a
certificate shared by N routes travels N times. The data plane builds one ``SSLContext`` per distinct
certificate (keyed by content), so it holds each once.

Private keys travel in the table like the other secrets of :mod:`kubegate.compiler.edge` (authenticated
push, Secret-backed bootstrap) and :func:`kubegate.compiler.edge.redacted` hides them in every view.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes as CertificatePublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes as PrivateKey
from pydantic import ConfigDict, Field

from kubegate.api import models
from kubegate.api.lean import LeanModel
from kubegate.compiler.edge import KEY_NOT_FOUND, SECRET_NOT_FOUND, SecretData

INVALID_CERTIFICATE = "InvalidCertificate"
#: ``ResolvedRefs`` stays True with this reason while a served certificate expires within EXPIRY_WARNING.
CERTIFICATE_EXPIRING = "CertificateExpiringSoon"
EXPIRY_WARNING = timedelta(days=14)
TLS_SECRET_TYPE = "kubernetes.io/tls"
CERT_KEY, PRIVATE_KEY = "tls.crt", "tls.key"


class _Frozen(LeanModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Certificate(_Frozen):
    """One certificate to serve: ``chain`` (PEM, leaf first) and ``key`` (PEM; secret: redacted in views),
    the leaf's DNS names (SAN) and expiry, and the Secret it came from."""

    secret: str = Field(min_length=1)
    chain: str = Field(min_length=1)
    key: str = Field(min_length=1)
    dns_names: tuple[str, ...] = Field(default=(), alias="dnsNames")
    not_after: str = Field(default="", alias="notAfter")


class RouteTls(_Frozen):
    """A route's TLS: ``certificates`` served for its hosts, or ``error`` (then none is served)."""

    certificates: tuple[Certificate, ...] = ()
    redirect_http: bool = Field(default=False, alias="redirectHTTP")
    error: str | None = None


SecretTypes = Mapping[str, str | None]


def secret_refs(spec: models.GatewayRouteSpec) -> tuple[str, ...]:
    """The names of the Secrets (in the route's namespace) the route's TLS needs."""
    if spec.tls is None:
        return ()
    return tuple(sorted({ref.name for ref in spec.tls.certificate_refs}))


def tls_policy(
    spec: models.GatewayRouteSpec,
    secrets: Mapping[str, SecretData],
    types: SecretTypes,
    *,
    now: datetime,
) -> tuple[dict[str, object] | None, tuple[str, str] | None]:
    """The route's TLS in table form and (reason, message) for its status: a problem (ResolvedRefs
    False), the expiry warning (:data:`CERTIFICATE_EXPIRING`, ResolvedRefs True), or None.

    ``secrets`` maps the names of the route namespace's Secrets to their data, ``types`` to their type."""
    tls = spec.tls
    if tls is None:
        return None, None
    certificates: list[dict[str, object]] = []
    expiring: list[str] = []
    for index, ref in enumerate(tls.certificate_refs):
        where = f"spec.tls.certificateRefs[{index}]: Secret {ref.name}"
        data = secrets.get(ref.name)
        if data is None:
            return _refused(tls, SECRET_NOT_FOUND, f"{where} not found")
        kind = types.get(ref.name)
        if kind != TLS_SECRET_TYPE:
            return _refused(
                tls, INVALID_CERTIFICATE, f"{where} is of type {kind or 'Opaque'}, not {TLS_SECRET_TYPE}"
            )
        missing = [key for key in (CERT_KEY, PRIVATE_KEY) if not data.get(key)]
        if missing:
            return _refused(tls, KEY_NOT_FOUND, f"{where} has no key {' or '.join(map(repr, missing))}")
        checked = _check(data[CERT_KEY], data[PRIVATE_KEY], now)
        if isinstance(checked, str):
            return _refused(tls, INVALID_CERTIFICATE, f"{where}: {checked}")
        names, not_after = checked
        if not_after - now <= EXPIRY_WARNING:
            expiring.append(f"{where}: the certificate expires at {_iso(not_after)} (within 14 days)")
        certificates.append(
            {
                "secret": ref.name,
                "chain": data[CERT_KEY].decode(),
                "key": data[PRIVATE_KEY].decode(),
                "dnsNames": list(names),
                "notAfter": _iso(not_after),
            }
        )
    out = {"certificates": certificates, "redirectHTTP": tls.redirect_http}
    return out, (CERTIFICATE_EXPIRING, "; ".join(expiring)) if expiring else None


def _refused(tls: models.TlsSpec, reason: str, message: str) -> tuple[dict[str, object], tuple[str, str]]:
    return {"certificates": [], "redirectHTTP": tls.redirect_http, "error": message}, (reason, message)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check(chain: bytes, key: bytes, now: datetime) -> tuple[tuple[str, ...], datetime] | str:
    """The leaf's DNS names and expiry, or what is wrong with the pair."""
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        return f"{CERT_KEY} is not a PEM certificate chain"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"{PRIVATE_KEY} is not an unencrypted PEM private key"
    leaf = certs[0]
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return f"{CERT_KEY}: the certificate's public key is not supported"
    if not _same_key(private, public):
        return f"{PRIVATE_KEY} does not match the certificate's public key"
    if now < leaf.not_valid_before_utc:
        return f"the certificate is not valid before {_iso(leaf.not_valid_before_utc)}"
    if now >= leaf.not_valid_after_utc:
        return f"the certificate expired at {_iso(leaf.not_valid_after_utc)}"
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sorted({name.lower() for name in san.get_values_for_type(x509.DNSName)}))
    except x509.ExtensionNotFound:
        names = ()
    return names, leaf.not_valid_after_utc


def _same_key(private: PrivateKey, public: CertificatePublicKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        mine: bytes = private.public_key().public_bytes(*spki)
        return mine == public.public_bytes(*spki)
    except (ValueError, TypeError):
        return False
