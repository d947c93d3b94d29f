"""The operator's writes to the Kubernetes API (kubernetes-asyncio): route status, the bootstrap Secret,
Events and the leader Lease. Reads come from kopf's watches, plus one listing of the names of every
watched object at start-up (:meth:`Kube.list_keys`: what the reconciler must have seen before it
publishes anything).

Patches are sent as ``application/merge-patch+json`` (custom resources do not take strategic merge
patches, and the client's default choice of content type is wrong for them), except those that must
apply only under a condition, which are JSON patches whose first operation is a ``test``: the Lease's
resourceVersion, and a route's ``metadata.generation`` for its status (or the status's
``observedGeneration`` for its removal; see :mod:`kubegate_operator.status`). The API server answers 422
without ``details.causes`` when such a test fails (a status it refuses carries causes naming the fields).
Status patches carry a field manager naming the gateway class (``kubegate/<class>``), so that the
object's ``managedFields`` say which instance wrote its status. RBAC this needs:
``patch`` on ``gatewayroutes/status``; ``get``, ``create``, ``patch`` on the bootstrap Secret; ``get``,
``create`` on the push token's Secret (:mod:`kubegate_operator.tokensecret`, never written once it exists);
``create`` on ``events``; ``get``, ``create``, ``patch`` on the leader Lease; ``list`` on what kopf
watches anyway (GatewayRoutes, EndpointSlices, Services, Secrets); ``get`` on Secrets, to read one that a
route starts to name after its watch event was dropped (:meth:`Kube.read_secret`).

Secret contents never reach a log line or an exception message from here: Secrets are read with
``_preload_content=False`` (the client logs every preloaded response body at debug level), and an error
carries only the HTTP status and reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from kubegate.api import models
from kubegate_operator.settings import ObjectRef

logger = logging.getLogger("kubegate.operator.kube")

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
MAX_FIELD_MANAGER = 128  # the API server's limit
PLURAL = "gatewayroutes"
LIST_PAGE = 500  # objects per page of the start-up listing
SECRET_LIST_PAGE = 50  # Secrets come with their data (a Helm release Secret can be ~1 MiB): smaller pages


async def load_config() -> None:
    """In-cluster service account if there is one, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()


def field_manager(gateway_class: str) -> str:
    """The field manager of one gateway class's status writes."""
    return f"kubegate/{gateway_class}"[:MAX_FIELD_MANAGER]


def _test_failed(error: ApiException) -> bool:
    """Whether a 422 is a failed ``test`` operation (no causes), not a refused value (causes)."""
    if error.status != 422:
        return False
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return not details.get("causes")


class Kube:
    def __init__(self, api: client.ApiClient, *, manager: str = field_manager("kubegate")) -> None:
        self.api = api
        self.manager = manager
        # Typed as Any: the generated signatures want model objects and omit ``_content_type``;
        # plain dicts and an explicit content type are what we send.
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)
        self.coordination: Any = client.CoordinationV1Api(api)
        self.discovery: Any = client.DiscoveryV1Api(api)

    @classmethod
    async def connect(cls, *, manager: str = field_manager("kubegate")) -> Kube:
        await load_config()
        return cls(client.ApiClient(), manager=manager)

    async def close(self) -> None:
        await self.api.close()

    async def list_keys(self, kind: str, namespace: str | None) -> set[tuple[str, str]]:
        """``(namespace, name)`` of every object of ``kind`` (GatewayRoute, EndpointSlice, Service or
        Secret), in ``namespace`` or everywhere; read in pages, and only the names are kept."""
        keys: set[tuple[str, str]] = set()
        token: str | None = None
        limit = SECRET_LIST_PAGE if kind == "Secret" else LIST_PAGE
        while True:
            page: dict[str, Any] = {"limit": limit, "_preload_content": False}
            if token:
                page["_continue"] = token
            response = await self._list(kind, namespace, page)
            try:
                data = await response.json()
            finally:
                response.release()
            for item in data.get("items") or ():
                meta = item.get("metadata") or {}
                if isinstance(meta.get("name"), str):
                    keys.add((str(meta.get("namespace") or ""), meta["name"]))
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                return keys

    async def _list(self, kind: str, namespace: str | None, page: dict[str, Any]) -> Any:
        if kind == "GatewayRoute":
            if namespace is None:
                return await self.custom.list_cluster_custom_object(
                    models.GROUP, models.VERSION, PLURAL, **page
                )
            return await self.custom.list_namespaced_custom_object(
                models.GROUP, models.VERSION, namespace, PLURAL, **page
            )
        if kind == "EndpointSlice":
            if namespace is None:
                return await self.discovery.list_endpoint_slice_for_all_namespaces(**page)
            return await self.discovery.list_namespaced_endpoint_slice(namespace, **page)
        if kind == "Secret":
            if namespace is None:
                return await self.core.list_secret_for_all_namespaces(**page)
            return await self.core.list_namespaced_secret(namespace, **page)
        if namespace is None:
            return await self.core.list_service_for_all_namespaces(**page)
        return await self.core.list_namespaced_service(namespace, **page)

    def _dict(self, obj: object) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    async def _unread(self, call: Awaitable[Any]) -> None:
        """Make a call whose answer is not needed without parsing it: a status patch or an Event answers
        with the whole object, which the client would turn into model objects (10,000 of each after the
        initial sync of 10,000 routes). Raises :class:`ApiException` on an error status, as usual."""
        response = await call
        try:
            if not 200 <= response.status <= 299:
                error = ApiException(status=response.status, reason=response.reason)
                error.body = await response.text()
                raise error
        finally:
            response.release()

    async def patch_route_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Literal["ok", "gone", "stale"]:
        """Replace a route's status, only while its ``metadata.generation`` is the status's
        ``observedGeneration`` (when it has one): ``stale`` otherwise, ``gone`` when there is no route."""
        generation = status.get("observedGeneration")
        test = [{"op": "test", "path": "/metadata/generation", "value": generation}]
        return await self._patch_status(
            namespace,
            name,
            [
                *(test if isinstance(generation, int) else []),
                {"op": "add", "path": "/status", "value": dict(status)},
            ],
        )

    async def clear_route_status(
        self, namespace: str, name: str, observed_generation: int
    ) -> Literal["ok", "gone", "stale"]:
        """Remove a route's status, only while its ``observedGeneration`` is ``observed_generation``:
        ``stale`` otherwise (rewritten, or removed, since)."""
        return await self._patch_status(
            namespace,
            name,
            [
                {"op": "test", "path": "/status/observedGeneration", "value": observed_generation},
                {"op": "remove", "path": "/status"},
            ],
        )

    async def _patch_status(
        self, namespace: str, name: str, patch: list[dict[str, Any]]
    ) -> Literal["ok", "gone", "stale"]:
        try:
            await self._unread(
                self.custom.patch_namespaced_custom_object_status(
                    models.GROUP,
                    models.VERSION,
                    namespace,
                    PLURAL,
                    name,
                    patch,
                    field_manager=self.manager,
                    _content_type=JSON_PATCH,
                    _preload_content=False,
                )
            )
        except ApiException as error:
            if error.status == 404:
                return "gone"
            if _test_failed(error):
                return "stale"
            raise
        return "ok"

    async def get_secret(self, ref: ObjectRef) -> dict[str, Any] | None:
        try:
            return self._dict(await self.core.read_namespaced_secret(ref.name, ref.namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret a route names, as the API server sends it (None when it does not exist). Raises
        :class:`ApiException` with the status and reason only (never the answer's body)."""
        response = await self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        try:
            if response.status == 404:
                return None
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason)
            return dict(await response.json())
        finally:
            response.release()

    async def create_secret(self, ref: ObjectRef, body: Mapping[str, Any]) -> bool:
        """Create a Secret; False when one of that name exists (409). The answer, which holds the data,
        is not parsed."""
        try:
            await self._unread(
                self.core.create_namespaced_secret(ref.namespace, dict(body), _preload_content=False)
            )
        except ApiException as error:
            if error.status == 409:
                return False
            error.body = None  # a Status, but never let a body near a log line
            raise
        return True

    async def put_secret(self, ref: ObjectRef, body: Mapping[str, Any], exists: bool) -> None:
        if not exists:
            try:
                await self.core.create_namespaced_secret(ref.namespace, dict(body))
                return
            except ApiException as error:
                if error.status != 409:
                    raise
        await self.core.patch_namespaced_secret(
            ref.name, ref.namespace, dict(body), _content_type=MERGE_PATCH
        )

    async def post_event(
        self, namespace: str, name: str, uid: str | None, kind: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about a GatewayRoute. ``involvedObject.uid`` matters: ``kubectl describe`` selects
        the Events of an object by its uid."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "name": name,
            "namespace": namespace,
        }
        if uid:
            involved["uid"] = uid
        event = self.core.create_namespaced_event(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{name}.", "namespace": namespace},
                "involvedObject": involved,
                "type": kind,
                "reason": reason,
                "message": message,
                "source": {"component": "kubegate-operator"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
            _preload_content=False,
        )
        await self._unread(event)

    # --- Lease (leader election) -----------------------------------------------------------------

    async def get_lease(self, ref: ObjectRef) -> dict[str, Any] | None:
        try:
            return self._dict(await self.coordination.read_namespaced_lease(ref.name, ref.namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def create_lease(self, ref: ObjectRef, spec: Mapping[str, Any]) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": ref.name, "namespace": ref.namespace},
            "spec": dict(spec),
        }
        try:
            await self.coordination.create_namespaced_lease(ref.namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def update_lease(self, ref: ObjectRef, resource_version: str, spec: Mapping[str, Any]) -> bool:
        """Optimistic update: a JSON patch that first tests resourceVersion (422/409 = lost the race)."""
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "replace", "path": "/spec", "value": dict(spec)},
        ]
        try:
            await self.coordination.patch_namespaced_lease(
                ref.name, ref.namespace, patch, _content_type=JSON_PATCH
            )
        except ApiException as error:
            if error.status in (409, 422):
                return False
            raise
        return True
