"""In-guest clusters (issue 19) over HTTP (``vigil.engine.clusters``).

- ``POST /v1/clusters`` builds one (security group, VIP port, members' ports with their
  addresses, anti-affinity server group, members booted with the generated cloud-init);
  201 once built, 202 while it still builds (``status`` says), 409 naming the missing
  setting when vigil cannot build clusters here.
- ``GET /v1/clusters``, ``GET /v1/clusters/{id}``, ``GET .../verify``,
  ``GET .../user-data`` (the members' cloud-init: it holds the cluster's secrets),
  ``DELETE /v1/clusters/{id}`` — the operator's (bearer token).
- ``POST /v1/clusters/{id}/fence`` — the cluster's fence agent (``fence_vigil``),
  authenticated by the cluster's token in ``X-Vigil-Cluster-Token``, not an operator's:
  a member holds no operator credential, and its token is good for its cluster only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Path, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from vigil.api.schemas import answers
from vigil.engine.clusters import MAX_SIZE, TOKEN_HEADER, BadToken, Clusters
from vigil.model import Cluster, ClusterStatus, HaPolicy
from vigil.store import NotFoundError

LOG = logging.getLogger("vigil.api.clusters")
_TEXT = r"^[^\x00-\x1f\x7f]+$"
# corosync's cluster_name and the members' host names are made from it
_NAME = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
ClusterId = Annotated[str, Path(max_length=64, pattern=_TEXT)]


class ClusterIn(BaseModel):
    name: str = Field(pattern=_NAME, description="lower-case letters, digits, '-'")
    external: bool = Field(
        default=False,
        description="its resources made by a Heat stack (doc/heat/): vigil records the "
        "cluster, hands out the stack's parameters and adopts the members; size, image, "
        "flavor and network are then the stack's",
    )
    size: int = Field(default=3, ge=2, le=MAX_SIZE)
    image: str | None = Field(default=None, min_length=1, max_length=255, pattern=_TEXT)
    flavor: str | None = Field(default=None, min_length=1, max_length=255, pattern=_TEXT)
    network: str | None = Field(default=None, min_length=1, max_length=255, pattern=_TEXT)
    vip: bool = Field(default=True, description="reserve a service address (a VIP)")
    policy: HaPolicy = Field(
        default=HaPolicy.NOTIFY,
        description="the members' HA policy: notify (the cluster moves its service; "
        "vigil fences and tells) or keep-running (vigil also evacuates the member)",
    )


class AdoptIn(BaseModel):
    server_group: str = Field(
        min_length=1, max_length=64, pattern=_TEXT, description="the stack's server group"
    )


class StackParametersOut(BaseModel):
    """A Heat environment: ``openstack stack create -e`` reads it as it is."""

    parameters: dict[str, str]


class MemberOut(BaseModel):
    name: str
    address: str
    port_id: str
    instance_id: str


class ClusterOut(BaseModel):
    id: str
    name: str
    project_id: str | None
    status: str
    detail: str
    size: int
    image: str
    flavor: str
    network: str
    policy: str
    external: bool
    vip: str
    members: list[MemberOut]
    server_group_id: str
    security_group_id: str
    created_at: float

    @classmethod
    def of(cls, c: Cluster) -> ClusterOut:
        return cls(
            id=c.id,
            name=c.name,
            project_id=c.project_id,
            status=c.status.value,
            detail=c.detail,
            size=c.size,
            image=c.image,
            flavor=c.flavor,
            network=c.network,
            policy=c.policy.value,
            external=c.external,
            vip=c.vip,
            members=[MemberOut(**m.__dict__) for m in c.members],
            server_group_id=c.server_group_id,
            security_group_id=c.security_group_id,
            created_at=c.created_at,
        )


class CheckOut(BaseModel):
    name: str
    ok: bool
    detail: str


class VerifyOut(BaseModel):
    cluster: str
    ok: bool
    checks: list[CheckOut]


class ClusterReport(BaseModel):
    """What a member says of the cluster (``crm_mon``), sent with fence_vigil's monitor."""

    quorate: bool
    online: list[Annotated[str, Field(max_length=64, pattern=_TEXT)]] = Field(max_length=32)
    dc: str = Field(default="", max_length=64)
    by: str = Field(default="", max_length=64)


class FenceIn(BaseModel):
    action: Literal["off", "on", "reboot", "status", "list", "monitor"]
    member: str | None = Field(default=None, max_length=64, pattern=_TEXT)
    report: ClusterReport | None = None


class FenceOut(BaseModel):
    member: str | None = None
    power: str | None = None
    detail: str = ""
    members: list[dict[str, str]] | None = None


def add_cluster_routes(app: FastAPI, *, clusters: Clusters, auth: Sequence[Any]) -> None:
    store = clusters.store

    @app.get("/v1/clusters", responses=answers(401), dependencies=auth, tags=["clusters"])
    def list_clusters() -> list[ClusterOut]:
        return [ClusterOut.of(c) for c in store.list_clusters()]

    @app.post(
        "/v1/clusters",
        status_code=201,
        responses={
            202: {"model": ClusterOut, "description": "accepted, still building"},
            **answers(400, 401, 409, 422),
        },
        dependencies=auth,
        tags=["clusters"],
    )
    def create_cluster(body: ClusterIn, response: Response) -> ClusterOut:
        """Build an in-guest cluster; waits for its members to be booted, bounded."""
        made = clusters.create(
            name=body.name,
            project_id=None,
            size=body.size,
            image=body.image or "",
            flavor=body.flavor or "",
            network=body.network or "",
            vip=body.vip,
            policy=body.policy,
            external=body.external,
        )
        if made.status == ClusterStatus.BUILDING:
            response.status_code = 202
        return ClusterOut.of(made)

    @app.get(
        "/v1/clusters/{cluster_id}",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["clusters"],
    )
    def get_cluster(cluster_id: ClusterId) -> ClusterOut:
        return ClusterOut.of(store.get_cluster(cluster_id))

    @app.get(
        "/v1/clusters/{cluster_id}/verify",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["clusters"],
    )
    def verify_cluster(cluster_id: ClusterId) -> VerifyOut:
        """Every member ACTIVE on a host of its own, every port bound (ACTIVE)."""
        checks = clusters.verify(cluster_id)
        return VerifyOut(
            cluster=cluster_id,
            ok=all(c.ok for c in checks),
            checks=[CheckOut(name=c.name, ok=c.ok, detail=c.detail) for c in checks],
        )

    @app.get(
        "/v1/clusters/{cluster_id}/user-data",
        responses={
            200: {
                "description": "the members' cloud-init user data",
                "content": {"text/cloud-config": {"schema": {"type": "string"}}},
            },
            **answers(401, 404, 409, 422),
        },
        dependencies=auth,
        tags=["clusters"],
    )
    def cluster_user_data(cluster_id: ClusterId) -> Response:
        """The members' cloud-init user data (it carries the cluster's secrets)."""
        text = clusters.user_data(store.get_cluster(cluster_id))
        return Response(text, media_type="text/cloud-config")

    @app.get(
        "/v1/clusters/{cluster_id}/stack-parameters",
        responses=answers(401, 404, 409, 422),
        dependencies=auth,
        tags=["clusters"],
    )
    def cluster_stack_parameters(cluster_id: ClusterId) -> StackParametersOut:
        """An external cluster's parameters for doc/heat/vigil-cluster.yaml, as a Heat
        environment (they carry the cluster's secrets)."""
        return StackParametersOut(
            parameters=clusters.stack_parameters(store.get_cluster(cluster_id))
        )

    @app.post(
        "/v1/clusters/{cluster_id}/adopt",
        responses=answers(400, 401, 404, 409, 422, 502),
        dependencies=auth,
        tags=["clusters"],
    )
    def adopt_cluster(cluster_id: ClusterId, body: AdoptIn) -> ClusterOut:
        """Take an external cluster's members from its stack's server group."""
        return ClusterOut.of(clusters.adopt(cluster_id, body.server_group))

    @app.delete(
        "/v1/clusters/{cluster_id}",
        status_code=204,
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["clusters"],
    )
    def delete_cluster(cluster_id: ClusterId) -> Response:
        """Delete the members, their ports, the VIP's, the server and security groups."""
        clusters.delete(cluster_id)
        return Response(status_code=204)

    @app.post(
        "/v1/clusters/{cluster_id}/fence",
        responses={
            202: {"model": FenceOut, "description": "asked of Nova: poll status"},
            409: {"model": FenceOut, "description": "power not known yet (host not fenced)"},
            **answers(400, 401, 404, 422),
        },
        tags=["clusters"],
    )
    def fence(
        cluster_id: ClusterId,
        body: FenceIn,
        token: Annotated[
            str | None, Header(alias=TOKEN_HEADER, max_length=128, pattern=_TEXT)
        ] = None,
    ) -> JSONResponse:
        """The cluster's fence agent: a member's power, off, on (``reboot`` is off)."""
        action = "off" if body.action == "reboot" else body.action
        try:
            report = None if body.report is None else body.report.model_dump()
            answer = clusters.fence(cluster_id, token, action, body.member, report)
        except BadToken as exc:
            LOG.warning("fence call for cluster %s refused: %s", cluster_id, exc)
            raise HTTPException(401, str(exc)) from exc
        except (NotFoundError, LookupError) as exc:
            raise HTTPException(404, str(exc)) from exc
        return JSONResponse(answer.body, status_code=answer.status)
