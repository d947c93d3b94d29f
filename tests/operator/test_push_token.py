"""The push token: the operator makes its Secret, and a rotation refuses no push.

Aspects: the operator creates the Secret when there is none (a random 32-byte token under the given key,
kubegate's labels), reads an existing one and never writes it (nor one without the key: no token then,
logged), and on a 409 (another replica created it meanwhile) reads the other's; API errors are retried
with backoff; nothing logs the token. The token sent is the mounted file's when it has one, else the
Secret's (the kubelet has not filled the optional volume yet); a missing file is logged once. During
the grace after a change the publisher sends the previous token in ``kubegate-previous-token``, and not
after it (a fake clock).

End to end, with 2 real ``kubegate serve`` processes and the operator's :class:`Publisher`: rotating the
operator's file first and the data planes' after, and the reverse (each side on its own schedule, a
table pushed at every step), no push is refused (none counted rejected by the publisher, none in the data
planes' ``kubegate_push_refusals_total``), while a wrong token is refused throughout and the old token is
refused once the data planes' grace (``--push-token-grace``, shortened here) has passed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubegate import pushtoken
from kubegate.compiler import table as tables
from kubegate_operator import metrics as metrics_mod
from kubegate_operator import publisher, settings, state, tokensecret
from tests.gateway import TOKEN, GatewayProcess

REF = settings.ObjectRef("kubegate-system", "kubegate-push-token")
NEW = "rotated-token-0123456789abcdef"
GUARD = 20.0


class FakeApi:
    """The two calls :class:`PushTokenSecret` makes, over a dict of Secrets; ``race`` makes a create find
    the Secret created by someone else (409); ``fail`` raises on the next reads."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.race: dict[str, Any] | None = None
        self.fail = 0

    async def read(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.calls.append("get")
        if self.fail:
            self.fail -= 1
            raise RuntimeError("(503) Service Unavailable")
        return self.secrets.get((namespace, name))

    async def create(self, ref: settings.ObjectRef, body: Mapping[str, Any]) -> bool:
        self.calls.append("create")
        if self.race is not None:
            self.secrets[(ref.namespace, ref.name)] = self.race
            return False
        self.secrets[(ref.namespace, ref.name)] = dict(body)
        return True

    def secret(self, key: str, token: str) -> dict[str, Any]:
        return {"data": {key: base64.b64encode(token.encode()).decode()}}


def made(api: FakeApi, key: str = "token") -> tokensecret.PushTokenSecret:
    return tokensecret.PushTokenSecret(ref=REF, key=key, read=api.read, create=api.create)


async def test_the_secret_is_created_when_there_is_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = FakeApi()
    secret = made(api, key="push-token")
    token = await secret.ensure()
    assert api.calls == ["get", "create"] and secret.created
    assert token is not None and len(token) == 43  # 32 random bytes, base64url
    body = api.secrets[(REF.namespace, REF.name)]
    assert body["metadata"] == {"name": REF.name, "namespace": REF.namespace, "labels": tokensecret.LABELS}
    assert body["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubegate"
    assert base64.b64decode(body["data"]["push-token"]).decode() == token
    assert body["type"] == "Opaque"
    assert token not in caplog.text and token not in repr(secret)
    assert await made(FakeApi()).ensure() != token  # random


async def test_an_existing_secret_is_read_and_never_written() -> None:
    api = FakeApi()
    api.secrets[(REF.namespace, REF.name)] = api.secret("token", " set-by-hand-0123456789\n")
    secret = made(api)
    assert await secret.ensure() == "set-by-hand-0123456789"
    assert api.calls == ["get"] and not secret.created


@pytest.mark.parametrize(
    "data", [{}, {"other": "eA=="}, {"token": ""}, {"token": "not base64!"}, {"token": "/w=="}]
)
async def test_an_existing_secret_without_a_token_is_left_alone(
    data: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeApi()
    api.secrets[(REF.namespace, REF.name)] = {"data": data}
    assert await made(api).ensure() is None
    assert api.calls == ["get"]
    assert "has no token under key 'token'" in caplog.text


async def test_two_replicas_racing_read_the_winner_s_token() -> None:
    api = FakeApi()
    api.race = api.secret("token", "the-other-replica-s-token")
    secret = made(api)
    assert await secret.ensure() == "the-other-replica-s-token"
    assert api.calls == ["get", "create", "get"] and not secret.created


async def test_api_errors_are_retried() -> None:
    api = FakeApi()
    api.fail = 2
    secret = made(api)
    with pytest.raises(RuntimeError):
        await secret.ensure()
    await asyncio.wait_for(secret.ensure_forever(initial=0.01, most=0.02), GUARD)
    assert secret.created and api.calls == ["get", "get", "get", "create"]


def test_the_file_wins_over_the_secret_s_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The operator's own mount of the Secret is optional: until the kubelet fills it, the token it created
    or read is sent; then the file, which follows rotations."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "token"
    read = publisher.token_reader(path, lambda: "from-the-secret")
    assert [read(), read()] == ["from-the-secret", "from-the-secret"]
    assert caplog.text.count("does not exist (yet)") == 1  # logged once, not per push
    path.write_text("from-the-file\n")
    assert read() == "from-the-file"
    path.write_text(NEW)
    assert read() == NEW
    path.write_text("\n")
    assert read() == "from-the-secret"
    assert publisher.token_reader(None, lambda: "x")() == "x"
    assert "from-the-secret" not in caplog.text and NEW not in caplog.text


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_the_publisher_sends_the_previous_token_during_its_grace() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({k: v for k, v in request.headers.items() if "token" in k or k == "authorization"})
        return httpx.Response(200, json={"version": None, "hash": None})

    current, clock = [TOKEN], Clock()
    token = pushtoken.RotatingToken(lambda: current[0], grace=600, clock=clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        pub = publisher.Publisher(client=client, token=token, backoff_initial=0.01, timeout=GUARD)
        replica = state.Replica("10.0.0.1", 9090)
        pub.syncs[replica] = publisher.ReplicaSync(replica=replica)
        sync = pub.syncs[replica]
        assert await pub._tell(sync)
        current[0] = NEW
        clock.now += 3600  # the grace counts from when the change is seen, not from the last push
        assert await pub._tell(sync)
        clock.now += 599
        assert await pub._tell(sync)
        clock.now += 1
        assert await pub._tell(sync)
    both = {"authorization": f"Bearer {NEW}", pushtoken.PREVIOUS_HEADER: TOKEN}
    assert seen == [{"authorization": f"Bearer {TOKEN}"}, both, both, {"authorization": f"Bearer {NEW}"}]


# --- end to end: real data planes, the operator's Publisher -----------------------------------------------

DP_GRACE = 4.0  # the data planes' grace, shortened so that its end can be seen


def _table(version: str) -> tables.RouteTable:
    route = {
        "id": "default/r1", "namespace": "default", "name": "r1", "generation": 1,
        "match": {"path": {"type": "Prefix", "value": f"/{version}"}},
        "backends": [{"name": "url:http://127.0.0.1:9", "endpoints": [{"host": "127.0.0.1", "port": 9}]}],
    }  # fmt: skip
    return tables.RouteTable.from_wire({"version": version, "routes": [route]})


def refusals(gw: GatewayProcess) -> dict[str, float]:
    text = httpx.get(gw.admin + "/metrics", timeout=5).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "kubegate_push_refusals"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


@pytest.fixture
def planes(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    gws = [GatewayProcess(tmp_path, extra=["--push-token-grace", str(DP_GRACE)]) for _ in range(2)]
    yield gws
    for gw in gws:
        gw.stop()


async def _until(predicate: Any, timeout: float = GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("first", ["operator", "dataplanes"])
async def test_a_rotation_refuses_no_push(planes: list[GatewayProcess], tmp_path: Path, first: str) -> None:
    m = metrics_mod.Metrics()
    ours = tmp_path / "operator-token"
    ours.write_text(TOKEN + "\n")
    theirs = [tmp_path / f"token-{gw.port}" for gw in planes]  # each data plane's file (tests/gateway.py)
    steps = {
        "operator": lambda: ours.write_text(NEW + "\n"),
        "dataplane 0": lambda: theirs[0].write_text(NEW + "\n"),
        "dataplane 1": lambda: theirs[1].write_text(NEW + "\n"),
    }
    order = ["operator", "dataplane 0", "dataplane 1"]
    if first == "dataplanes":
        order = ["dataplane 0", "dataplane 1", "operator"]
    async with httpx.AsyncClient() as client:
        pub = publisher.Publisher(
            client=client,
            token=pushtoken.RotatingToken(publisher.token_reader(ours)),
            backoff_initial=0.05,
            backoff_max=0.2,
            timeout=GUARD,
            metrics=m,
        )
        pub.set_replicas([state.Replica("127.0.0.1", gw.admin_port) for gw in planes])
        for version, step in enumerate(["start", *order]):
            if step != "start":
                steps[step]()
            pub.publish(_table(f"v{version}"))
            await _until(lambda: pub.all_in_sync())
            assert pub.replica_count == 2
            for gw in planes:  # a wrong token is refused all along
                assert (
                    gw.push({"version": "x", "routes": []}, token="wrong-token-0123456789").status_code == 403
                )
        assert m.value("kubegate_operator_pushes_total", {"result": "rejected"}) == 0
        assert m.value("kubegate_operator_pushes_total", {"result": "ok"}) >= 8
        assert [refusals(gw) for gw in planes] == [{"missing": 0, "invalid": len(order) + 1}] * 2
        assert [gw.table()["version"] for gw in planes] == [f"v{len(order)}"] * 2

        # The old token, alone, is refused once the data planes' grace has passed (counted from when each
        # noticed the change); the new one is admitted.
        await asyncio.sleep(DP_GRACE + 0.2)
        table = {"apiVersion": "kubegate.dev/v1alpha1", "version": "late", "routes": []}
        assert [gw.push(table, token=TOKEN).status_code for gw in planes] == [403, 403]
        assert [gw.push(table, token=NEW).status_code for gw in planes] == [200, 200]
        await pub.close()
    for gw in planes:
        assert TOKEN not in gw.log() and NEW not in gw.log()
        assert "the push token changed" in gw.log()
