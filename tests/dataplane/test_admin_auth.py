"""Push authentication and the push size limit of the admin app, in process (no sockets, no data plane).

Cases found by ``bench/mutation.py admin-auth`` (``build_admin_app.read_push``). Aspects: no or a non-Bearer
``Authorization`` is 401 with ``WWW-Authenticate: Bearer`` and the token is not even read; a wrong token and
an unset token get the same 403; the right token (case-insensitive scheme, surrounding spaces) is accepted;
every refusal closes the connection and leaves the served table alone; the size limit at its boundary, both
from ``Content-Length`` (refused before the body is read) and from the bytes received (no
``Content-Length``); a client that disconnects mid-body gets an empty 400 and nothing is swapped in.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubegate.dataplane import admin
from kubegate.dataplane.proxy import Gateway
from kubegate.dataplane.snapshot import SnapshotStore
from tests.gateway import TOKEN, table

BODY = json.dumps(table(version="pushed")).encode()

Answer = tuple[int, dict[str, str], bytes]


class Token:
    """A push-token source that counts how often it is read."""

    def __init__(self, value: str | None) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> str | None:
        self.reads += 1
        return self.value


def make_app(token: Token, **options: Any) -> tuple[Any, Gateway]:
    gateway = Gateway(store=SnapshotStore(clock=lambda: 0.0))
    return admin.build_admin_app(gateway, push_token=token, **options), gateway


async def call(
    app: Any,
    headers: dict[str, str],
    chunks: list[bytes],
    *,
    method: str = "PUT",
    disconnect: bool = False,
) -> Answer:
    """One request straight through ASGI: ``chunks`` are the body's receive events (no Content-Length is
    added: pass it in ``headers``); ``disconnect`` ends the body with a client disconnect instead."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/table",
        "raw_path": b"/table",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 9090),
    }
    events: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": disconnect or i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]
    if disconnect:
        events.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-length": str(len(BODY))}


def assert_refused(answer: Answer, status: int, error: str, gateway: Gateway) -> None:
    code, headers, body = answer
    assert (code, json.loads(body)) == (status, {"error": error})
    assert headers["connection"] == "close"
    assert gateway.store.current is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": TOKEN},
        {"authorization": f"Bearer{TOKEN}"},
    ],
)
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_no_bearer_token_is_401_and_the_token_is_not_read(headers: dict[str, str], method: str) -> None:
    token = Token(TOKEN)
    app, gateway = make_app(token)
    answer = await call(app, headers, [BODY], method=method)
    assert_refused(answer, 401, "missing bearer token", gateway)
    assert answer[1]["www-authenticate"] == "Bearer"
    assert token.reads == 0


@pytest.mark.parametrize("configured", [TOKEN, None])
@pytest.mark.parametrize("sent", ["wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "", " "])
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_wrong_or_unset_token_is_the_same_403(configured: str | None, sent: str, method: str) -> None:
    token = Token(configured)
    app, gateway = make_app(token)
    answer = await call(app, bearer(sent), [BODY], method=method)
    assert_refused(answer, 403, "invalid bearer token", gateway)
    assert "www-authenticate" not in answer[1]
    assert token.reads == 1


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}  "]
)
async def test_right_token_is_accepted(authorization: str) -> None:
    token = Token(TOKEN)
    app, gateway = make_app(token)
    code, _, body = await call(app, {"authorization": authorization}, [BODY])
    assert code == 200, body
    assert json.loads(body)["version"] == "pushed"
    assert gateway.store.current is not None
    assert gateway.store.current.version == "pushed"
    assert token.reads == 1


async def test_token_is_read_on_every_push() -> None:
    token = Token(TOKEN)
    app, gateway = make_app(token)
    assert (await call(app, bearer(TOKEN), [BODY]))[0] == 200
    token.value = "rotated"
    code, _, body = await call(app, bearer(TOKEN), [BODY])
    assert (code, json.loads(body)) == (403, {"error": "invalid bearer token"})
    assert (await call(app, bearer("rotated"), [BODY]))[0] == 200
    assert token.reads == 3
    assert gateway.store.current is not None


# --- the size limit -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("limit", "accepted"), [(len(BODY) + 1, True), (len(BODY), True), (len(BODY) - 1, False)]
)
@pytest.mark.parametrize("declared", [True, False])
async def test_size_limit_at_the_boundary(limit: int, accepted: bool, declared: bool) -> None:
    app, gateway = make_app(Token(TOKEN), max_table_bytes=limit)
    headers = bearer(TOKEN) if declared else {"authorization": f"Bearer {TOKEN}"}
    chunks = [BODY[i : i + 7] for i in range(0, len(BODY), 7)]
    answer = await call(app, headers, chunks)
    if accepted:
        assert answer[0] == 200, answer
        assert gateway.store.current is not None
    else:
        assert_refused(answer, 413, f"table larger than {limit} bytes", gateway)


async def test_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    app, gateway = make_app(Token(TOKEN), max_table_bytes=len(BODY))
    headers = {"authorization": f"Bearer {TOKEN}", "content-length": str(len(BODY) + 1)}
    answer = await call(app, headers, [BODY])
    assert_refused(answer, 413, f"table larger than {len(BODY)} bytes", gateway)
    # The whole (valid, small) body was there to read: only the declared length can have refused it.
    assert (await call(app, bearer(TOKEN), [BODY]))[0] == 200


@pytest.mark.parametrize("declared", ["abc", "-1", ""])
async def test_a_declared_length_that_is_not_a_number_falls_back_to_counting(declared: str) -> None:
    app, gateway = make_app(Token(TOKEN))
    answer = await call(app, {"authorization": f"Bearer {TOKEN}", "content-length": declared}, [BODY])
    assert answer[0] == 200, answer
    assert gateway.store.current is not None


async def test_client_disconnect_mid_body_is_an_empty_400_and_nothing_is_swapped() -> None:
    app, gateway = make_app(Token(TOKEN))
    code, _, body = await call(app, {"authorization": f"Bearer {TOKEN}"}, [BODY], disconnect=True)
    assert (code, body) == (400, b"")
    assert gateway.store.current is None
