"""TLS to backends in the compiled table: which name to verify, against which CAs, resolved from Secrets.

A backend speaks TLS when it is a ``url`` with the ``https`` scheme or has ``tls`` (``service`` backends
need it; for ``https`` urls it only tunes the verification). :func:`backend_tls` turns that into a
:class:`~kubegate.compiler.table.BackendTls` (pure: the Secrets come in the bundle, as for auth and the
route's own TLS):

- **server name** (SNI, and the name the certificate must be valid for): ``tls.serverName``; else the
  url's host; else ``<service>.<namespace>.svc``, the name a cluster-internal certificate usually carries
  (Kubernetes gives Services no certificates: a backend whose certificate names something else says so
  with ``serverName``).
- **CAs**: ``tls.caSecretRef`` (key ``ca.crt`` by default), checked to hold at least one PEM certificate
  that parses; else the system's CAs (``ca`` None). ``insecureSkipVerify`` turns verification off.
- **Problems** (a missing Secret or key, no certificate in it) come back as (reason, message): the route
  gets ``ResolvedRefs=False`` and the backend an ``error``, so its share of traffic gets 500: a backend
  meant to be verified is never reached unverified.

The data plane builds one ``SSLContext`` per distinct (CAs, verify) and keeps upstream connections per
(endpoint, TLS settings) (:mod:`kubegate.dataplane.upstreamtls`).
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509

from kubegate.api import models
from kubegate.compiler import table
from kubegate.compiler.edge import KEY_NOT_FOUND, SECRET_NOT_FOUND, SecretData

INVALID_CA = "InvalidCACertificate"


def secret_refs(spec: models.GatewayRouteSpec) -> tuple[str, ...]:
    """The names of the Secrets (in the route's namespace) its backends' TLS needs."""
    return tuple(
        sorted({ref.tls.ca_secret_ref.name for ref in spec.backends if ref.tls and ref.tls.ca_secret_ref})
    )


def server_name(ref: models.BackendRef, namespace: str) -> str:
    if ref.tls is not None and ref.tls.server_name is not None:
        return ref.tls.server_name
    if ref.url is not None:
        return models.split_http_url(ref.url)[0]
    return f"{ref.service}.{namespace}.svc"


def backend_tls(
    ref: models.BackendRef, index: int, namespace: str, secrets: Mapping[str, SecretData]
) -> tuple[table.BackendTls | None, tuple[str, str] | None]:
    """(the backend's TLS, or None when it speaks plain HTTP; a problem (reason, message) or None)."""
    if not ref.speaks_tls:
        return None, None
    name = server_name(ref, namespace)
    tls = ref.tls
    if tls is None or tls.ca_secret_ref is None:
        return table.BackendTls(
            serverName=name, verify=not (tls is not None and tls.insecure_skip_verify)
        ), None
    field = f"spec.backends[{index}].tls.caSecretRef"
    secret = secrets.get(tls.ca_secret_ref.name)
    if secret is None:
        return None, (SECRET_NOT_FOUND, f"{field}: Secret {namespace}/{tls.ca_secret_ref.name} not found")
    data = secret.get(tls.ca_secret_ref.key)
    if data is None:
        return None, (
            KEY_NOT_FOUND,
            f"{field}: Secret {namespace}/{tls.ca_secret_ref.name} has no key {tls.ca_secret_ref.key!r}",
        )
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        return None, (
            INVALID_CA,
            f"{field}: key {tls.ca_secret_ref.key!r} of Secret {namespace}/{tls.ca_secret_ref.name} holds "
            "no PEM certificate",
        )
    return table.BackendTls(serverName=name, ca=data.decode("ascii", "replace")), None
