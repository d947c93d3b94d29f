"""Push authentication and the push size limit of the admin app, in process (no sockets, no data plane).

Cases found by ``bench/mutation.py admin-auth`` (``build_admin_app.read_push``). Aspects: no or a non-Bearer
``Authorization`` is 401 with ``WWW-Authenticate: Bearer`` and the token is not even read; a wrong token and
an unset token get the same 403; the right token (case-insensitive scheme, surrounding spaces) is accepted;
every refusal closes the connection and leaves the served table alone; the size limit at its boundary, both
from ``Content-Length`` (refused before the body is read) and from the bytes received (no
``Content-Length``); a client that disconnects mid-body gets an empty 400 and nothing is swapped in.

Rotation (:mod:`kubegate.pushtoken`, a fake clock): after the token changes, the previous one is admitted
for the grace period (as the bearer token or as ``kubegate-previous-token``), then refused; a wrong token
is refused throughout, in either header; the first token read is no rotation; a token file that cannot
be read refuses even the previous token; refusals and rotations are counted on ``/metrics`` (no token in
it); the constant-time comparison checks every pair.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubegate import pushtoken
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


def make_app(token: Token | pushtoken.RotatingToken, **options: Any) -> tuple[Any, Gateway]:
    gateway = Gateway(store=SnapshotStore(clock=lambda: 0.0))
    return admin.build_admin_app(gateway, push_token=token, **options), gateway


async def call(
    app: Any,
    headers: dict[str, str],
    chunks: list[bytes],
    *,
    method: str = "PUT",
    path: str = "/table",
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
        "path": path,
        "raw_path": path.encode(),
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
    assert (await call(app, bearer("rotated"), [BODY]))[0] == 200
    code, _, body = await call(app, bearer("wrong"), [BODY])
    assert (code, json.loads(body)) == (403, {"error": "invalid bearer token"})
    assert token.reads == 3
    assert gateway.store.current is not None


# --- rotation -----------------------------------------------------------------------------------------

NEW = "rotated-token-abcdefghijklmnop"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rotating(token: Token, clock: Clock, grace: float = 600.0) -> pushtoken.RotatingToken:
    return pushtoken.RotatingToken(token, grace=grace, clock=clock)


def with_previous(bearer_token: str, previous: str) -> dict[str, str]:
    return {**bearer(bearer_token), pushtoken.PREVIOUS_HEADER: previous}


async def metrics(app: Any) -> str:
    status, _, body = await call(app, {}, [], method="GET", path="/metrics")
    assert status == 200
    return body.decode()


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_the_previous_token_is_admitted_during_the_grace_then_refused(method: str) -> None:
    """The data plane saw the change first: an operator still on the old token (no previous header) is
    admitted until the grace has passed, counted from when the data plane noticed the change."""
    token, clock = Token(TOKEN), Clock()
    app, gateway = make_app(rotating(token, clock))
    assert (await call(app, bearer(TOKEN), [BODY]))[0] == 200  # PUT: a table to PATCH afterwards
    token.value = NEW
    clock.now += 3600  # a change long after the last push: the grace starts when it is seen
    assert gateway.store.current is not None
    served = gateway.store.current.hash
    empty = {"version": "d", "base": served, "hash": served, "upsert": [], "remove": []}
    delta = json.dumps(empty).encode() if method == "PATCH" else BODY
    headers = {**bearer(TOKEN), "content-length": str(len(delta))}
    assert (await call(app, headers, [delta], method=method))[0] == 200
    clock.now += 599
    assert (await call(app, headers, [delta], method=method))[0] == 200
    assert (await call(app, {**headers, "authorization": f"Bearer {NEW}"}, [delta], method=method))[0] == 200
    clock.now += 1
    code, _, body = await call(app, headers, [delta], method=method)
    assert (code, json.loads(body)) == (403, {"error": "invalid bearer token"})
    assert (await call(app, {**headers, "authorization": f"Bearer {NEW}"}, [delta], method=method))[0] == 200


async def test_the_previous_header_admits_a_sender_ahead_of_the_replica() -> None:
    """The operator saw the change first: it sends the new token and the previous one; a replica still on
    the old token admits the push by the previous header, one on the new token by the bearer token."""
    token, clock = Token(TOKEN), Clock()
    app, _ = make_app(rotating(token, clock))
    assert (await call(app, with_previous(NEW, TOKEN), [BODY]))[0] == 200  # the replica is on TOKEN
    token.value = NEW
    assert (await call(app, with_previous(NEW, TOKEN), [BODY]))[0] == 200  # now on NEW
    assert (await call(app, bearer(NEW), [BODY]))[0] == 200


@pytest.mark.parametrize(
    ("sent", "previous"), [("wrong", "also-wrong"), ("wrong", ""), ("", "wrong"), (NEW + "x", TOKEN + "x")]
)
async def test_wrong_tokens_are_refused_in_either_header(sent: str, previous: str) -> None:
    token, clock = Token(TOKEN), Clock()
    app, gateway = make_app(rotating(token, clock))
    assert_refused(
        await call(app, with_previous(sent, previous), [BODY]), 403, "invalid bearer token", gateway
    )
    token.value = NEW  # a rotation: the previous token is TOKEN now, in its grace
    assert_refused(
        await call(app, with_previous(sent, previous), [BODY]), 403, "invalid bearer token", gateway
    )


async def test_the_previous_header_alone_is_no_bearer_token() -> None:
    token, clock = Token(TOKEN), Clock()
    app, gateway = make_app(rotating(token, clock))
    answer = await call(app, {pushtoken.PREVIOUS_HEADER: TOKEN, "content-length": str(len(BODY))}, [BODY])
    assert_refused(answer, 401, "missing bearer token", gateway)
    assert token.reads == 0


async def test_an_unreadable_token_file_refuses_the_previous_token_too() -> None:
    token, clock = Token(TOKEN), Clock()
    app, _ = make_app(rotating(token, clock))
    token.value = NEW
    assert (await call(app, bearer(NEW), [BODY]))[0] == 200  # first read: NEW (no rotation seen)
    assert (await call(app, bearer(TOKEN), [BODY]))[0] == 403  # TOKEN was never this replica's
    token.value = None  # unreadable, empty: refuses everything, as before
    assert (await call(app, with_previous(NEW, TOKEN), [BODY]))[0] == 403
    token.value = NEW  # readable again: the same token, no rotation
    assert (await call(app, bearer(NEW), [BODY]))[0] == 200


async def test_refusals_and_rotations_are_counted_and_no_token_is_shown() -> None:
    token, clock = Token(TOKEN), Clock()
    tokens = rotating(token, clock)
    app, _ = make_app(tokens)
    await call(app, {}, [BODY])  # 401
    await call(app, bearer("wrong"), [BODY])  # 403
    await call(app, bearer(TOKEN), [BODY])
    token.value = NEW
    await call(app, bearer(NEW), [BODY])
    clock.now += 100
    text = await metrics(app)
    assert 'kubegate_push_refusals_total{reason="missing"} 1.0' in text
    assert 'kubegate_push_refusals_total{reason="invalid"} 1.0' in text
    assert "kubegate_push_token_rotations_total 1.0" in text
    assert "kubegate_push_token_grace_seconds 500.0" in text
    assert TOKEN not in text and NEW not in text
    assert TOKEN not in repr(tokens) and NEW not in repr(tokens)
    assert repr(tokens) == "<RotatingToken set, previous for 500 s, 1 rotations>"


def test_admits_compares_every_pair() -> None:
    assert pushtoken.admits(["a", "b"], ["b"]) and pushtoken.admits(["b"], ["x", "b"])
    assert not pushtoken.admits(["", ""], ["", "a"]) and not pushtoken.admits(["a"], [])
    assert not pushtoken.admits(["ab"], ["a", "abc"])


def test_generated_tokens_are_32_random_bytes() -> None:
    tokens = {pushtoken.generate() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) == 43 and t.isascii() for t in tokens)  # base64url of 32 bytes, no padding


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
