"""Auth in the compiler: Secrets resolved into what the data plane needs, and nothing more.

Aspects: API keys reach the table only as SHA-256 hashes (the table's bytes never hold a key in clear);
a Secret that changes is picked up by the next compile even through the memo (routes with auth are never
reused from it); ``stringData`` wins over ``data`` as on the API server; a Secret of another namespace is
never used. The accepted and refused specs, and the redacted printed form, are in the golden files
``auth.in.yaml`` and ``auth-invalid.in.yaml``.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from kubegate.compiler import edge, resources
from kubegate.compiler.compile import CompileMemo, compile_bundle

NOW = datetime(2026, 1, 1, tzinfo=UTC)

ROUTE = """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: partners, namespace: shop, uid: 6f1c, generation: 1}
spec:
  backends: [{url: "http://127.0.0.1:9001"}]
  auth: {apiKey: {header: X-API-Key, secretRef: {name: keys}}}
"""


def secret(namespace: str = "shop", **values: str) -> str:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    lines = "".join(f"  {k}: {v}\n" for k, v in data.items())
    return (
        f"---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: {namespace}}}\ndata:\n{lines}"
    )


def compiled_keys(text: str, memo: CompileMemo | None = None) -> tuple[tuple[str, str], ...] | str:
    result = compile_bundle(resources.load_yaml(text, source="t"), now=NOW, memo=memo)
    [route] = result.table.routes
    assert route.edge is not None and route.edge.auth is not None
    if route.edge.auth.error is not None:
        return route.edge.auth.error
    assert route.edge.auth.api_key is not None
    return route.edge.auth.api_key.keys


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_keys_travel_only_as_hashes() -> None:
    text = ROUTE + secret(acme="acme-key-1\n", globex="globex-key-2")
    assert compiled_keys(text) == ((sha("acme-key-1"), "acme"), (sha("globex-key-2"), "globex"))
    table = compile_bundle(resources.load_yaml(text, source="t"), now=NOW).table
    assert b"acme-key-1" not in table.encode() and b"globex-key-2" not in table.encode()


def test_a_changed_secret_is_picked_up_through_the_memo() -> None:
    memo = CompileMemo()  # the route's uid and generation stay: without auth it would be reused
    assert compiled_keys(ROUTE + secret(acme="old"), memo) == ((sha("old"), "acme"),)
    assert compiled_keys(ROUTE + secret(acme="new"), memo) == ((sha("new"), "acme"),)
    assert compiled_keys(ROUTE, memo) == "spec.auth.apiKey.secretRef: Secret keys not found"
    assert memo.hits == 2  # the memo was used: validation was not redone


def test_string_data_wins_over_data() -> None:
    text = ROUTE + secret(acme="from-data") + "stringData: {acme: from-string-data}\n"
    assert compiled_keys(text) == ((sha("from-string-data"), "acme"),)


def test_a_secret_of_another_namespace_is_not_used() -> None:
    assert compiled_keys(ROUTE + secret(namespace="default", acme="k")) == (
        "spec.auth.apiKey.secretRef: Secret keys not found"
    )


def test_redacted_hides_every_secret_field() -> None:
    wire = {
        "edge": {
            "auth": {
                "jwt": {"algorithms": ["HS256"], "hmacSecret": "c2VjcmV0", "jwks": '{"keys": []}'},
                "apiKey": {"header": "x-api-key", "keys": [["abc123", "acme"]]},
            }
        }
    }
    shown = edge.redacted(wire)
    assert shown["edge"]["auth"]["jwt"]["hmacSecret"] == edge.REDACTED
    assert shown["edge"]["auth"]["jwt"]["jwks"] == edge.REDACTED
    assert shown["edge"]["auth"]["apiKey"]["keys"] == [[edge.REDACTED, "acme"]]
    assert wire["edge"]["auth"]["jwt"]["hmacSecret"] == "c2VjcmV0"  # the input is left alone
