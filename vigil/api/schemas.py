"""Request and response bodies of the REST API (they make its OpenAPI document).

Requests forbid unknown fields, so a typo is a 422 naming the field rather than a
silently ignored setting, and they are strict: ``false`` is not a share of 0.0 nor
``"yes"`` a boolean (pydantic's strict mode; enums stay lax, since FastAPI validates the
decoded JSON, where an enum arrives as its value). Every refusal has one declared shape:
``Problem`` (``{"detail": "..."}``) or, for 422, ``ValidationProblem`` (the fields and
why, never the rejected values).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from vigil.drivers.fence_factory import validate_fence_options
from vigil.drivers.fence_options import is_secret_name
from vigil.model import (
    AppInstance,
    Failure,
    FenceMethod,
    HaPolicy,
    Host,
    HostServices,
    HostState,
    InstanceFailure,
    Recovery,
    Segment,
    Step,
)

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
# The largest id a store holds (SQLite's INTEGER, PostgreSQL's and MariaDB's BIGINT are
# signed 64-bit): anything larger is a 422 naming the parameter, never a database error.
MAX_ID = 2**63 - 1
Policy = Annotated[HaPolicy, Field(strict=False)]  # the enum's value, as JSON carries it


def _integral(value: Any) -> Any:
    """JSON Schema's integer: 4.0 is 4 (what schema-driven clients may send); 4.5, "4"
    and true stay refused by the strict check that follows."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Bounds before the validator, so that the OpenAPI document shows them (minimum/maximum).
Evacuations = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_integral)]
Priority = Annotated[int, Field(ge=-1000, le=1000), BeforeValidator(_integral)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Problem(BaseModel):
    """Every refusal but a validation error: what was refused and why, naming the field or
    record (``detail``)."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field")
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422: each field that was refused and why (the value itself is never echoed: it
    could be a BMC password)."""

    detail: list[FieldProblem]


class SegmentIn(_In):
    name: str = Field(pattern=NAME)
    description: str = Field("", max_length=1024)
    default_policy: Policy = HaPolicy.OFF
    max_failed_share: float | None = Field(
        None, ge=0.0, le=1.0, description="default: [recovery] max_failed_share"
    )
    max_parallel_evacuations: Evacuations | None = Field(
        None, description="default: [recovery] max_parallel_evacuations"
    )


class SegmentPatch(_In):
    description: str | None = Field(None, max_length=1024)
    default_policy: Policy | None = None
    max_failed_share: float | None = Field(None, ge=0.0, le=1.0)
    max_parallel_evacuations: Evacuations | None = None
    paused: bool | None = Field(None, description="false resumes a segment the storm guard paused")


class SegmentOut(BaseModel):
    name: str
    description: str
    default_policy: HaPolicy
    max_failed_share: float
    max_parallel_evacuations: int
    paused: bool
    pause_reason: str

    @classmethod
    def of(cls, s: Segment) -> SegmentOut:
        return cls(
            name=s.name,
            description=s.description,
            default_policy=s.default_policy,
            max_failed_share=s.max_failed_share,
            max_parallel_evacuations=s.max_parallel_evacuations,
            paused=s.paused,
            pause_reason=s.pause_reason,
        )


class FenceMethodIn(_In):
    driver: str = Field(
        pattern=r"^(sim|redfish|ipmi|fence-agent|self-fence)$", description="fencing driver"
    )
    options: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_make_sense(self) -> FenceMethodIn:
        # A bad fencing level is a 4xx now, not a failed fence at 3 a.m. (never the values).
        problems = validate_fence_options(self.driver, self.options, extra_drivers=("self-fence",))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_model(self) -> FenceMethod:
        return FenceMethod(self.driver, dict(self.options))


class FenceMethodOut(BaseModel):
    driver: str
    options: dict[str, str]

    @classmethod
    def of(cls, m: FenceMethod) -> FenceMethodOut:
        # Secrets are never returned (S5): any option whose name suggests one is masked.
        return cls(
            driver=m.driver,
            options={k: ("***" if is_secret_name(k) else v) for k, v in m.options.items()},
        )


class HostIn(_In):
    name: str = Field(pattern=NAME)
    segment: str = Field(pattern=NAME)
    maintenance: bool = False
    reserved: bool = False
    fencing: list[FenceMethodIn] = Field(default_factory=list, max_length=8)

    def to_model(self) -> Host:
        return Host(
            name=self.name,
            segment=self.segment,
            maintenance=self.maintenance,
            reserved=self.reserved,
            fencing=tuple(m.to_model() for m in self.fencing),
        )


class HostBatchIn(_In):
    """Hosts registered in one go (a cloud's thousands), all or none."""

    hosts: list[HostIn] = Field(min_length=1, max_length=1000)


class HostPatch(_In):
    segment: str | None = Field(None, pattern=NAME)
    maintenance: bool | None = None
    reserved: bool | None = None
    fencing: list[FenceMethodIn] | None = Field(None, max_length=8)


class HostOut(BaseModel):
    name: str
    segment: str
    state: HostState
    state_reason: str
    state_changed_at: float
    maintenance: bool
    reserved: bool
    fencing: list[FenceMethodOut]
    heartbeat_age: float | None = None

    @classmethod
    def of(cls, h: Host, heartbeat_age: float | None = None) -> HostOut:
        return cls(
            name=h.name,
            segment=h.segment,
            state=h.state,
            state_reason=h.state_reason,
            state_changed_at=h.state_changed_at,
            maintenance=h.maintenance,
            reserved=h.reserved,
            fencing=[FenceMethodOut.of(m) for m in h.fencing],
            heartbeat_age=heartbeat_age,
        )


class InstancePolicyIn(_In):
    policy: Policy
    priority: Priority = 0


class InstanceOut(BaseModel):
    id: str
    name: str | None = None
    host: str | None = None
    status: str | None = None
    policy: HaPolicy
    priority: int
    policy_source: str = Field(description="override, metadata or segment")


class FailureOut(BaseModel):
    id: int
    host: str
    kind: str
    status: str
    reason: str
    sources: list[str]
    first_seen: float
    last_seen: float
    count: int

    @classmethod
    def of(cls, f: Failure) -> FailureOut:
        return cls(
            id=f.id,
            host=f.host,
            kind=f.kind.value,
            status=f.status.value,
            reason=f.reason,
            sources=list(f.sources),
            first_seen=f.first_seen,
            last_seen=f.last_seen,
            count=f.count,
        )


class GuestFailureOut(BaseModel):
    id: int
    instance_id: str
    host: str
    kind: str
    status: str
    reason: str
    first_seen: float
    last_seen: float
    count: int
    restarts: int
    restart_status: str | None  # the restart step: pending, running, succeeded, failed
    restart_detail: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, f: InstanceFailure) -> GuestFailureOut:
        return cls(
            id=f.id,
            instance_id=f.instance_id,
            host=f.host,
            kind=f.kind.value,
            status=f.status.value,
            reason=f.reason,
            first_seen=f.first_seen,
            last_seen=f.last_seen,
            count=f.count,
            restarts=f.restarts,
            restart_status=f.action_status.value if f.action_status else None,
            restart_detail=f.action_detail,
            detail=dict(f.detail),
        )


class ServiceStateOut(BaseModel):
    up: bool
    since: float
    detail: str


class HostServicesOut(BaseModel):
    host: str
    services: dict[str, ServiceStateOut]
    services_down: list[str]
    reported_at: float
    compute_hold: str  # "", "disabled" (by vigil), "left" (someone else's disable)
    compute_hold_reason: str

    @classmethod
    def of(cls, h: HostServices) -> HostServicesOut:
        return cls(
            host=h.host,
            services={
                n: ServiceStateOut(up=s.up, since=s.since, detail=s.detail)
                for n, s in sorted(h.services.items())
            },
            services_down=list(h.down),
            reported_at=h.reported_at,
            compute_hold=h.hold.value,
            compute_hold_reason=h.hold_reason,
        )


class StepOut(BaseModel):
    id: int
    seq: int
    kind: str
    status: str
    instance_id: str | None
    instance_name: str | None
    priority: int
    attempts: int
    started_at: float | None
    finished_at: float | None
    detail: str
    result: dict[str, Any]

    @classmethod
    def of(cls, s: Step) -> StepOut:
        return cls(
            id=s.id,
            seq=s.seq,
            kind=s.kind.value,
            status=s.status.value,
            instance_id=s.instance_id,
            instance_name=s.instance_name,
            priority=s.priority,
            attempts=s.attempts,
            started_at=s.started_at,
            finished_at=s.finished_at,
            detail=s.detail,
            result=dict(s.result),
        )


class RecoveryOut(BaseModel):
    id: int
    failure_id: int
    host: str
    segment: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    reason: str
    steps: list[StepOut]

    @classmethod
    def of(cls, r: Recovery) -> RecoveryOut:
        return cls(
            id=r.id,
            failure_id=r.failure_id,
            host=r.host,
            segment=r.segment,
            status=r.status.value,
            created_at=r.created_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            reason=r.reason,
            steps=[StepOut.of(s) for s in r.steps],
        )


class PauseIn(_In):
    reason: str = Field(min_length=1, max_length=1024)


class ControlOut(BaseModel):
    paused: bool
    reason: str
    changed_at: float


class SegmentOwnerOut(BaseModel):
    segment: str
    owner: str = Field(description="the vigil-server (member id) that owns it")
    epoch: int = Field(description="the fencing token: raised at each takeover")
    taken_at: float


class ServersOut(BaseModel):
    """The servers as the one answering sees them."""

    member: str = Field(description="the server that answered")
    backend: str = Field(description="the coordination backend (credentials hidden)")
    backend_healthy: bool
    error: str = Field(description="why the backend is not reachable; empty when it is")
    members: list[str] = Field(description="the live servers, by the backend")
    acting_for: float = Field(
        description="seconds this server may still act without renewing its locks"
    )
    acting_on: dict[str, int] = Field(
        description="segments this server acts on now, with their epoch"
    )
    owners: list[SegmentOwnerOut] = Field(description="each segment's owner by the store")


class SubscriptionIn(_In):
    name: str = Field(pattern=NAME)
    url: str = Field(
        max_length=2048,
        pattern=r"^[hH][tT][tT][pP][sS]?://[^\s/?#@]+",
        description="http(s) URL events are POSTed to",
    )
    secret: str = Field(
        min_length=16, max_length=256, description="HMAC-SHA256 key of X-Vigil-Signature"
    )
    event_types: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="event types, exact or 'prefix.*'; empty: every event",
    )


class SubscriptionOut(BaseModel):
    name: str
    url: str
    event_types: list[str]
    created_at: float


class EvacuateIn(_In):
    target_host: str | None = Field(None, pattern=NAME)


class HandledIn(_In):
    reason: str = Field("handled by consumer", max_length=1024)


class DismissIn(_In):
    reason: str = Field("dismissed by operator", max_length=1024)


WHY = {
    400: "a body that is not JSON, or a value the store refuses (named in detail)",
    401: "missing or wrong bearer token",
    404: "no such record (named in detail)",
    409: "the record's state forbids it now, or it already exists",
    422: "a field, parameter or header that does not validate",
    502: "Nova (the compute driver) failed",
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The refusals a route can answer, with their body, for the OpenAPI document: the
    document is the API (schemathesis holds every route to it)."""
    return {
        code: {"model": ValidationProblem if code == 422 else Problem, "description": WHY[code]}
        for code in codes
    }


# --- application checks (issue 17) -----------------------------------------------------


class AppCheckOut(BaseModel):
    name: str
    health: str
    failures: int
    last_run_at: float | None
    since: float | None
    detail: str


class AppEpisodeOut(BaseModel):
    status: str
    mode: str
    opened_at: float
    reason: str
    attempts: int
    last_action_at: float | None
    action: str
    action_status: str | None
    action_detail: str
    closed_at: float | None
    closed_by: str


class AppInstanceOut(BaseModel):
    """An instance's application checks: declared, their state, its current or last
    failure (``episode``)."""

    instance_id: str
    host: str
    mode: str
    declaration: dict[str, str]
    error: str
    checks: list[AppCheckOut]
    started_at: float
    last_beat_at: float | None
    episode: AppEpisodeOut | None

    @classmethod
    def of(cls, inst: AppInstance) -> AppInstanceOut:
        ep = inst.episode
        return cls(
            instance_id=inst.instance_id,
            host=inst.host,
            mode=inst.mode,
            declaration=dict(inst.declaration),
            error=inst.error,
            checks=[
                AppCheckOut(
                    name=name,
                    health=s.health.value,
                    failures=s.failures,
                    last_run_at=s.last_run_at,
                    since=s.since,
                    detail=s.detail,
                )
                for name, s in sorted(inst.checks.items())
            ],
            started_at=inst.started_at,
            last_beat_at=inst.last_beat_at,
            episode=None
            if ep is None
            else AppEpisodeOut(
                status=ep.status.value,
                mode=ep.mode,
                opened_at=ep.opened_at,
                reason=ep.reason,
                attempts=ep.attempts,
                last_action_at=ep.last_action_at,
                action=ep.action,
                action_status=None if ep.action_status is None else ep.action_status.value,
                action_detail=ep.action_detail,
                closed_at=ep.closed_at,
                closed_by=ep.closed_by,
            ),
        )


class AppBeatIn(_In):
    """An application's heartbeat; ``reset``: recover me now (what ``detail`` says)."""

    reset: bool = False
    detail: str = Field("", max_length=500)


class AppCloseIn(_In):
    reason: str = Field("closed by an operator", max_length=1024)
    by: str = Field("operator", max_length=255)


class AppCredentialOut(BaseModel):
    instance_id: str
    credential: str
    header: str
