"""The operator's own API calls (:class:`~kubegate_operator.kube.Kube`) against the emulator.

Aspects: a status patch lands and answers ``ok``, ``gone`` for a route that is gone (404), and ``stale``
(nothing written) when the route's generation is no longer the status's observedGeneration; a status is
removed only while its observedGeneration is the one given (else ``stale``); an Event is created on the
route (none of these calls parses the object the API answers with); the start-up listing of names, per
namespace and everywhere (the emulator ignores ``limit``: paging itself is not exercised). The same
status calls against a real API server: ``tests/kube/test_gateway_classes.py``.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio import client, config

from kubegate_operator.kube import Kube
from tests.operator.conftest import gatewayroute
from tests.operator.kube import EVENTS, ROUTES, KubeAPI

NS = "kube-calls"
SPEC = {"match": {"path": {"type": "Prefix", "value": "/k"}}, "backends": [{"url": "http://127.0.0.1:9"}]}


async def test_status_events_and_listing(kube_api: KubeAPI, tmp_path: Path) -> None:
    created = [kube_api.create(ROUTES, gatewayroute(f"k{i}", SPEC, NS)) for i in range(3)]
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube_api.kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration
    )
    kube = Kube(client.ApiClient(configuration))
    try:
        status = {"observedGeneration": 1, "conditions": []}
        assert await kube.patch_route_status(NS, "k0", status) == "ok"
        assert (kube_api.get(ROUTES, NS, "k0") or {}).get("status") == status
        assert await kube.patch_route_status(NS, "missing", status) == "gone"

        # Generation 2: a status computed from generation 1 no longer lands, one from 2 does.
        kube_api.patch(ROUTES, NS, "k0", {"spec": {"gatewayClassName": "internal"}})
        assert (kube_api.get(ROUTES, NS, "k0") or {})["metadata"]["generation"] == 2
        late = {"observedGeneration": 1, "conditions": [], "late": True}
        assert await kube.patch_route_status(NS, "k0", late) == "stale"
        assert (kube_api.get(ROUTES, NS, "k0") or {}).get("status") == status
        current = {"observedGeneration": 2, "conditions": []}
        assert await kube.patch_route_status(NS, "k0", current) == "ok"

        # Removal: only of the status with the observedGeneration given.
        assert await kube.clear_route_status(NS, "k0", 1) == "stale"
        assert (kube_api.get(ROUTES, NS, "k0") or {}).get("status") == current
        assert await kube.clear_route_status(NS, "k0", 2) == "ok"
        assert "status" not in (kube_api.get(ROUTES, NS, "k0") or {})
        assert await kube.clear_route_status(NS, "k0", 2) == "stale"
        assert await kube.clear_route_status(NS, "missing", 2) == "gone"

        await kube.post_event(NS, "k0", created[0]["metadata"]["uid"], "Normal", "Accepted", "compiled")
        events = [e for e in kube_api.list(EVENTS, NS) if e["involvedObject"]["name"] == "k0"]
        assert [(e["reason"], e["involvedObject"]["uid"]) for e in events] == [
            ("Accepted", created[0]["metadata"]["uid"])
        ]

        expected = {(NS, f"k{i}") for i in range(3)}
        assert await kube.list_keys("GatewayRoute", NS) == expected
        assert expected <= await kube.list_keys("GatewayRoute", None)
    finally:
        await kube.close()
