"""The event catalogue: every event vigil publishes, its payload and its JSON schema.

Payloads are versioned objects in the shape of OpenStack's versioned notifications, so a
consumer of Nova's notifications reads vigil's the same way::

    {"vigil_object.name": "HostFailurePayload", "vigil_object.namespace": "vigil",
     "vigil_object.version": "1.0", "vigil_object.data": {...}}

A payload's minor version grows when fields are added, its major version when a field
changes meaning or disappears. ``doc/notification_samples`` holds one sample per event
type; the tests validate every sample and every event a recovery emits against
``payload_schema``.

Step events come in three: ``.start`` when a step begins (each attempt), ``.end`` when it
succeeded, ``.error`` when it failed for good. ``vigil.instance.notify.end`` is the
message to the owner of a ``notify`` instance: its host failed and was fenced; vigil moved
nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from vigil.model import Event, GuestFailureKind, StepKind

NAMESPACE = "vigil"

_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_INT = {"type": "integer"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    props = {**required, **(optional or {})}
    return {
        "type": "object",
        "required": sorted(required),
        "properties": props,
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Payload:
    name: str
    version: str
    data: dict[str, Any]  # JSON schema of vigil_object.data


HOST_FAILURE = Payload(
    "HostFailurePayload",
    "1.0",
    _obj(
        {"host": _STR, "reason": _STR},
        {
            "segment": _OPT_STR,
            "sources": {"type": "array", "items": _STR},
            "recovery_id": {"type": ["integer", "null"]},
            "paused": _OPT_STR,
            "boot_id": _OPT_STR,
            "previous_boot_id": _OPT_STR,
        },
    ),
)
STEP = Payload(
    "RecoveryStepPayload",
    "1.0",
    _obj(
        {
            "host": _STR,
            "recovery_id": _INT,
            "step_id": _INT,
            "step": {"enum": [k.value for k in StepKind]},
            "attempt": _INT,
        },
        {
            "instance_id": _OPT_STR,
            "instance_name": _OPT_STR,
            "target_host": _OPT_STR,
            "detail": _STR,
            "result": {"type": "object"},
        },
    ),
)
RECOVERY = Payload(
    "RecoveryPayload",
    "1.0",
    _obj(
        {"host": _STR, "recovery_id": _INT},
        {"outcome": _STR, "reason": _STR, "requested_by": _STR},
    ),
)
SEGMENT = Payload("SegmentPayload", "1.0", _obj({"segment": _STR, "reason": _STR}))
HOST = Payload("HostPayload", "1.0", _obj({"host": _STR}, {"reason": _STR}))
CONSUMER_ACTION = Payload(
    "ConsumerActionPayload",
    "1.0",
    _obj(
        {"action": {"enum": ["evacuate", "restart", "handled"]}},
        {
            "instance_id": _OPT_STR,
            "host": _OPT_STR,
            "target_host": _OPT_STR,
            "failure_id": {"type": ["integer", "null"]},
            "recovery_id": {"type": ["integer", "null"]},
            "reason": _STR,
        },
    ),
)
GUEST_FAILURE = Payload(
    "GuestFailurePayload",
    "1.0",
    _obj(
        {
            "host": _STR,
            "instance_id": _STR,
            "failure_id": _INT,
            "kind": {"enum": [k.value for k in GuestFailureKind]},
            "reason": _STR,
        },
        {
            "status": _STR,
            "count": _INT,
            "policy": _STR,
            "restarts": _INT,
            "attempt": _INT,
            "detail": {"type": "object"},
            "observed_at": {"type": "number"},
        },
    ),
)
APP_FAILURE = Payload(
    "AppFailurePayload",
    "1.0",
    _obj(
        {"host": _STR, "instance_id": _STR, "reason": _STR},
        {
            "check": _STR,
            "health": _STR,
            "detail": _STR,
            "failing": {"type": "array", "items": _STR},
            "mode": {"enum": ["keep-running", "notify"]},
            "rung": _STR,
            "attempt": _INT,
            "action_id": _STR,
            "closed_by": _STR,
        },
    ),
)
HOST_SERVICES = Payload(
    "HostServicesPayload",
    "1.0",
    _obj(
        {"host": _STR, "services_down": {"type": "array", "items": _STR}},
        {
            "services": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["up", "since"],
                    "properties": {
                        "up": {"type": "boolean"},
                        "since": {"type": "number"},
                        "detail": _STR,
                    },
                },
            },
            "changed": {"type": "array", "items": _STR},
            "action": {"enum": ["disabled", "enabled", "left-disabled", "released"]},
            "reason": _STR,
        },
    ),
)
TEST = Payload("TestPayload", "1.0", _obj({"subscription": _STR}, {"message": _STR}))

STEP_EVENT_NAMES = {
    StepKind.FENCE: "vigil.host.fence",
    StepKind.FORCE_DOWN: "vigil.host.compute.force_down",
    StepKind.LIST_INSTANCES: "vigil.host.instances.list",
    StepKind.EVACUATE: "vigil.instance.evacuate",
    StepKind.NOTIFY: "vigil.instance.notify",
    StepKind.RECORD_INSTANCES: "vigil.host.instances.record",
    StepKind.FIND_STOPPED: "vigil.host.instances.find_stopped",
    StepKind.START: "vigil.instance.start",
}


@dataclass(frozen=True)
class EventType:
    name: str
    payload: Payload
    priority: str
    description: str


def _catalogue() -> dict[str, EventType]:
    types = [
        EventType(
            "vigil.host.failure.suspected",
            HOST_FAILURE,
            "WARN",
            "Heartbeats from the host stopped; its BMC is being read.",
        ),
        EventType(
            "vigil.host.failure.cleared",
            HOST_FAILURE,
            "INFO",
            "A suspect host's heartbeats resumed: nothing will be done.",
        ),
        EventType(
            "vigil.host.failure.confirmed",
            HOST_FAILURE,
            "ERROR",
            "The host is declared failed; a recovery starts (or is paused: see paused).",
        ),
        EventType(
            "vigil.host.failure.withdrawn",
            HOST_FAILURE,
            "WARN",
            "A paused declaration that never acted is taken back (the host's heartbeats"
            " returned, or an operator dismissed it): nothing was fenced or moved.",
        ),
        EventType(
            "vigil.host.rebooted",
            HOST_FAILURE,
            "ERROR",
            "The host came back with a new kernel boot id without a declared failure (its"
            " watchdog reset it, or a power blip shorter than detection): a recovery starts"
            " its stopped HA instances.",
        ),
        EventType(
            "vigil.host.restored", HOST, "INFO", "An operator put a recovered host back into use."
        ),
        EventType(
            "vigil.segment.paused",
            SEGMENT,
            "CRITICAL",
            "Storm guard: automatic recovery in the segment is paused.",
        ),
        EventType(
            "vigil.segment.resumed",
            SEGMENT,
            "WARN",
            "A segment the storm guard paused resumes by itself: every declaration it held"
            " was withdrawn.",
        ),
        EventType("vigil.recovery.paused", RECOVERY, "WARN", "A recovery is held."),
        EventType("vigil.recovery.resumed", RECOVERY, "INFO", "A held recovery goes on."),
        EventType(
            "vigil.recovery.retried", RECOVERY, "WARN", "An operator retried a failed recovery."
        ),
        EventType(
            "vigil.recovery.end",
            RECOVERY,
            "INFO",
            "A recovery ended; outcome is succeeded or failed.",
        ),
        EventType(
            "vigil.consumer.action",
            CONSUMER_ACTION,
            "INFO",
            "A consumer acted through vigil's API (evacuate, restart, handled).",
        ),
        EventType(
            "vigil.instance.guest.failure",
            GUEST_FAILURE,
            "WARN",
            "A host agent reported a guest failure (watchdog, crash, QEMU died, I/O error);"
            " repeated reports fold into one failure, count says how many.",
        ),
        EventType(
            "vigil.instance.guest.notify",
            GUEST_FAILURE,
            "WARN",
            "Policy notify: the owner is told of the guest failure; the guest is left as it is.",
        ),
        EventType(
            "vigil.instance.guest.escalated",
            GUEST_FAILURE,
            "ERROR",
            "Restart budget exhausted, or a watchdog reset loop: vigil stops acting on the"
            " instance; an operator or the owner must look.",
        ),
        EventType(
            "vigil.instance.guest.restart.start",
            GUEST_FAILURE,
            "INFO",
            "A crashed instance is restarted through Nova (each attempt).",
        ),
        EventType(
            "vigil.instance.guest.restart.end",
            GUEST_FAILURE,
            "INFO",
            "The restarted instance is ACTIVE again.",
        ),
        EventType(
            "vigil.instance.guest.restart.error",
            GUEST_FAILURE,
            "ERROR",
            "A restart attempt failed; the next one follows after a backoff, within budget.",
        ),
        EventType(
            "vigil.host.service.down",
            HOST_SERVICES,
            "WARNING",
            "A watched service of the host (nova-compute, libvirtd) stopped running. Its"
            " instances are left running and the host is not fenced.",
        ),
        EventType(
            "vigil.host.service.up",
            HOST_SERVICES,
            "INFO",
            "A watched service of the host that was down runs again.",
        ),
        EventType(
            "vigil.host.compute.disabled",
            HOST_SERVICES,
            "WARNING",
            "While a service of the host is down, its compute service is disabled for"
            " scheduling (action 'disabled'); one already disabled by someone else is left"
            " as it is (action 'left-disabled').",
        ),
        EventType(
            "vigil.host.compute.enabled",
            HOST_SERVICES,
            "INFO",
            "Every service of the host runs again: the compute service vigil disabled is"
            " enabled (action 'enabled'), or, disabled by someone else meanwhile, left to"
            " them (action 'released').",
        ),
        EventType(
            "vigil.app.check.failing",
            APP_FAILURE,
            "WARN",
            "An application check of the instance failed threshold times in a row.",
        ),
        EventType(
            "vigil.app.check.healthy",
            APP_FAILURE,
            "INFO",
            "A failing application check passes again.",
        ),
        EventType(
            "vigil.app.not_ready",
            APP_FAILURE,
            "WARN",
            "A readiness check fails: the instance is not ready (a load balancer or its"
            " owner may take it out of service); vigil does not recover it for that.",
        ),
        EventType("vigil.app.ready", APP_FAILURE, "INFO", "A readiness check passes again."),
        EventType(
            "vigil.app.failure",
            APP_FAILURE,
            "WARN",
            "The application of a keep-running instance failed: its recovery ladder starts.",
        ),
        EventType(
            "vigil.app.notify",
            APP_FAILURE,
            "WARN",
            "Policy notify: the owner is told that the application failed; vigil does"
            " nothing to the instance.",
        ),
        EventType(
            "vigil.app.recovery.start",
            APP_FAILURE,
            "INFO",
            "A rung of the ladder is tried (restart-app in the guest, soft-reboot,"
            " hard-reboot, rebuild through Nova).",
        ),
        EventType(
            "vigil.app.recovery.end",
            APP_FAILURE,
            "INFO",
            "The rung was carried out (the command exited 0, or Nova accepted the action);"
            " the checks decide whether it helped.",
        ),
        EventType(
            "vigil.app.recovery.error",
            APP_FAILURE,
            "ERROR",
            "The rung could not be carried out; the ladder goes on after its backoff.",
        ),
        EventType(
            "vigil.app.escalated",
            APP_FAILURE,
            "ERROR",
            "The ladder is spent and the application still fails: vigil acts no more"
            " until an operator or the owner closes the failure.",
        ),
        EventType(
            "vigil.app.resolved",
            APP_FAILURE,
            "INFO",
            "Every liveness check of the instance passes again.",
        ),
        EventType(
            "vigil.app.closed",
            APP_FAILURE,
            "INFO",
            "An operator or the owner closed the application failure.",
        ),
        EventType(
            "vigil.app.reset_requested",
            APP_FAILURE,
            "WARN",
            "The application asked, with its credential, to be recovered now.",
        ),
        EventType(
            "vigil.app.declaration.refused",
            APP_FAILURE,
            "WARN",
            "The instance's vigil:check:* or vigil:app_recovery declaration is refused"
            " (reason names the field); none of its checks runs until it is corrected.",
        ),
        EventType("vigil.subscription.test", TEST, "INFO", "A test event fired by an operator."),
    ]
    for kind, base in STEP_EVENT_NAMES.items():
        what = kind.value
        types += [
            EventType(f"{base}.start", STEP, "INFO", f"The {what} step starts (each attempt)."),
            EventType(f"{base}.end", STEP, "INFO", f"The {what} step succeeded."),
            EventType(f"{base}.error", STEP, "ERROR", f"The {what} step failed for good."),
        ]
    return {t.name: t for t in types}


CATALOGUE: dict[str, EventType] = _catalogue()


def payload_schema(event_type: str) -> dict[str, Any]:
    """The JSON schema of the payload of ``event_type``."""
    payload = CATALOGUE[event_type].payload
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{event_type} ({payload.name} {payload.version})",
        "type": "object",
        "required": [
            "vigil_object.name",
            "vigil_object.namespace",
            "vigil_object.version",
            "vigil_object.data",
        ],
        "properties": {
            "vigil_object.name": {"const": payload.name},
            "vigil_object.namespace": {"const": NAMESPACE},
            "vigil_object.version": {"const": payload.version},
            "vigil_object.data": payload.data,
        },
        "additionalProperties": False,
    }


def make_event(event_type: str, *, at: float, priority: str | None = None, **data: Any) -> Event:
    """An event of a catalogued type with a fresh idempotency key; ``data`` is the payload's
    ``vigil_object.data``, whose ``host`` and ``instance_id`` also index the event."""
    kind = CATALOGUE[event_type]  # KeyError for an uncatalogued type: a bug, fail loudly
    return Event(
        id=str(uuid.uuid4()),
        event_type=event_type,
        timestamp=at,
        host=data.get("host"),
        instance_id=data.get("instance_id"),
        priority=priority or kind.priority,
        payload={
            "vigil_object.name": kind.payload.name,
            "vigil_object.namespace": NAMESPACE,
            "vigil_object.version": kind.payload.version,
            "vigil_object.data": data,
        },
    )


def event_as_json(event: Event) -> dict[str, Any]:
    """The event as the API, the event stream and webhooks show it."""
    return {
        "seq": event.seq,
        "id": event.id,
        "event_type": event.event_type,
        "timestamp": event.timestamp,
        "priority": event.priority,
        "host": event.host,
        "instance_id": event.instance_id,
        "project_id": event.project_id,
        "payload": dict(event.payload),
    }


def _guest_samples(iid: str) -> dict[str, dict[str, Any]]:
    common = {"host": "compute-1", "instance_id": iid, "failure_id": 12}
    crash = {**common, "kind": "crashed", "policy": "keep-running"}
    return {
        "vigil.instance.guest.failure": {
            **crash,
            "reason": "guest crashed: panicked",
            "status": "open",
            "count": 1,
            "detail": {"event": "lifecycle", "state": "crashed", "reason": "panicked"},
            "observed_at": 1_799_999_999.95,
        },
        "vigil.instance.guest.notify": {
            **common,
            "kind": "watchdog",
            "policy": "notify",
            "reason": "guest watchdog fired (libvirt action none)",
            "count": 1,
            "detail": {"event": "watchdog", "action": "none"},
        },
        "vigil.instance.guest.escalated": {
            **crash,
            "reason": "restart budget exhausted: 3 restarts within 600s",
            "restarts": 3,
            "count": 4,
        },
        "vigil.instance.guest.restart.start": {
            **crash,
            "reason": "guest crashed: panicked",
            "restarts": 1,
            "attempt": 1,
        },
        "vigil.instance.guest.restart.end": {
            **crash,
            "reason": "hard reboot through Nova: ACTIVE",
            "restarts": 1,
            "attempt": 1,
        },
        "vigil.instance.guest.restart.error": {
            **crash,
            "reason": "Nova refused: instance is locked",
            "restarts": 1,
            "attempt": 1,
        },
    }


def _service_samples(host: str) -> dict[str, dict[str, Any]]:
    down = {
        "nova-compute": {
            "up": False,
            "since": 1_799_999_998.0,
            "detail": "no process matches 'nova-compute'",
        },
        "libvirtd": {"up": True, "since": 1_799_990_000.0, "detail": "pid 812"},
    }
    up = {**down, "nova-compute": {"up": True, "since": 1_800_000_000.0, "detail": "pid 4242"}}
    reason = "vigil: host services down: nova-compute"
    return {
        "vigil.host.service.down": {
            "host": host,
            "services_down": ["nova-compute"],
            "services": down,
            "changed": ["nova-compute"],
        },
        "vigil.host.service.up": {
            "host": host,
            "services_down": [],
            "services": up,
            "changed": ["nova-compute"],
        },
        "vigil.host.compute.disabled": {
            "host": host,
            "services_down": ["nova-compute"],
            "action": "disabled",
            "reason": reason,
        },
        "vigil.host.compute.enabled": {
            "host": host,
            "services_down": [],
            "action": "enabled",
            "reason": f"services up again; was disabled with {reason!r}",
        },
    }


def _app_samples(host: str, iid: str) -> dict[str, dict[str, Any]]:
    base = {"host": host, "instance_id": iid}
    web = {**base, "check": "web", "detail": "exit status 1: wget: server returned error: 503"}
    failing = {**base, "failing": ["web"], "mode": "keep-running"}
    rung = {**failing, "rung": "restart-app", "attempt": 1, "action_id": "5f0c6b1e"}
    return {
        "vigil.app.check.failing": {**web, "health": "failing", "reason": "failed 3 times"},
        "vigil.app.check.healthy": {**web, "health": "healthy", "reason": "passes again"},
        "vigil.app.not_ready": {
            **web,
            "check": "ready",
            "health": "failing",
            "reason": "not ready",
        },
        "vigil.app.ready": {**web, "check": "ready", "health": "healthy", "reason": "ready"},
        "vigil.app.failure": {**failing, "reason": "failing: web"},
        "vigil.app.notify": {**failing, "mode": "notify", "reason": "failing: web"},
        "vigil.app.recovery.start": {**rung, "reason": "failing: web"},
        "vigil.app.recovery.end": {**rung, "reason": "systemctl restart web: exit status 0"},
        "vigil.app.recovery.error": {**rung, "reason": "guest agent unresponsive"},
        "vigil.app.escalated": {
            **failing,
            "reason": (
                "ladder spent (2 restart-app, 1 soft-reboot, 1 hard-reboot); still failing: web"
            ),
        },
        "vigil.app.resolved": {**base, "reason": "every check passes"},
        "vigil.app.closed": {**base, "reason": "closed by an operator", "closed_by": "admin"},
        "vigil.app.reset_requested": {**base, "reason": "the application asked to be recovered"},
        "vigil.app.declaration.refused": {
            **base,
            "reason": "vigil:check:web.port: a http check needs a port",
        },
    }


def samples() -> dict[str, dict[str, Any]]:
    """One documented example per event type, as published (``doc/notification_samples``).

    Fixed ids and times, so the files only change when an event does."""
    host, at = "compute-1", 1_800_000_000.0
    rid, iid = 7, "0e5c1a8a-3f1e-4c4e-9d4b-2b8c1f0d9a11"
    step_data: dict[StepKind, dict[str, Any]] = {
        StepKind.FENCE: {"result": {"level": 1, "device": "redfish BMC 10.0.0.11"}},
        StepKind.FORCE_DOWN: {},
        StepKind.LIST_INSTANCES: {
            "result": {
                "instances": [
                    {"id": iid, "name": "db-1", "status": "ACTIVE", "policy": "keep-running"}
                ]
            }
        },
        StepKind.EVACUATE: {
            "instance_id": iid,
            "instance_name": "db-1",
            "result": {"from": host, "to": "compute-2", "status": "ACTIVE"},
        },
        StepKind.NOTIFY: {"instance_id": iid, "instance_name": "db-1"},
        StepKind.RECORD_INSTANCES: {
            "result": {"instances": [{"id": iid, "name": "db-1", "status": "ACTIVE"}]}
        },
        StepKind.FIND_STOPPED: {
            "result": {
                "instances": [
                    {"id": iid, "name": "db-1", "status": "SHUTOFF", "policy": "keep-running"}
                ]
            }
        },
        StepKind.START: {
            "instance_id": iid,
            "instance_name": "db-1",
            "result": {"status": "ACTIVE"},
        },
    }
    data: dict[str, dict[str, Any]] = {
        "vigil.host.failure.suspected": {"host": host, "reason": "no heartbeat for 1.00s"},
        "vigil.host.failure.cleared": {
            "host": host,
            "reason": "heartbeats resumed",
            "segment": "rack-a",
        },
        "vigil.host.failure.confirmed": {
            "host": host,
            "segment": "rack-a",
            "sources": ["heartbeat", "bmc"],
            "reason": "no heartbeat for 1.04s and the BMC reads power off",
            "paused": None,
        },
        "vigil.host.failure.withdrawn": {
            "host": host,
            "recovery_id": rid,
            "reason": "heartbeats returned before anything was fenced or moved",
        },
        "vigil.host.rebooted": {
            "host": host,
            "segment": "rack-a",
            "reason": "host compute-1 booted again (boot id 5f0c… -> 9a21…) without vigil "
            "declaring it failed: its guests were stopped",
            "boot_id": "9a21c3d4-0b7e-4f55-8d2a-6c1e0f3b7a90",
            "previous_boot_id": "5f0c9e1a-2d3b-4c6f-9e8a-1b7d5c3a2f10",
        },
        "vigil.host.restored": {"host": host, "reason": "operator"},
        "vigil.segment.paused": {
            "segment": "rack-a",
            "reason": "3 of 4 hosts of segment rack-a failing at once (more than 50%): storm guard",
        },
        "vigil.segment.resumed": {
            "segment": "rack-a",
            "reason": "every declaration the storm guard held was withdrawn",
        },
        "vigil.recovery.paused": {
            "host": host,
            "recovery_id": rid,
            "reason": "segment rack-a paused: storm guard",
        },
        "vigil.recovery.resumed": {"host": host, "recovery_id": rid},
        "vigil.recovery.retried": {"host": host, "recovery_id": rid, "requested_by": "operator"},
        "vigil.recovery.end": {
            "host": host,
            "recovery_id": rid,
            "outcome": "succeeded",
            "reason": "host fenced; 1 instances evacuated, 0 notified",
        },
        "vigil.consumer.action": {
            "action": "evacuate",
            "instance_id": iid,
            "host": host,
            "target_host": "compute-3",
            "recovery_id": rid,
            "reason": "requested through the API",
        },
        **_guest_samples(iid),
        **_service_samples(host),
        **_app_samples(host, iid),
        "vigil.subscription.test": {
            "subscription": "noc",
            "message": "test event fired by an operator",
        },
    }
    for n, (kind, base) in enumerate(STEP_EVENT_NAMES.items()):
        common = {
            "host": host,
            "recovery_id": rid,
            "step_id": 40 + n,
            "step": kind.value,
            "attempt": 1,
            "instance_id": None,
            "instance_name": None,
            "target_host": None,
        }
        extra = step_data[kind]
        data[f"{base}.start"] = {
            **common,
            **{k: v for k, v in extra.items() if k != "result"},
            "detail": "",
            "result": {},
        }
        data[f"{base}.end"] = {**common, **extra, "detail": f"{kind.value} done"}
        data[f"{base}.error"] = {
            **common,
            **{k: v for k, v in extra.items() if k != "result"},
            "attempt": 5,
            "detail": f"{kind.value} failed: BMC unreachable",
            "result": {},
        }
    out = {}
    for n, name in enumerate(sorted(CATALOGUE)):
        event = make_event(name, at=at + n, **data[name])
        if event.instance_id:  # as the store stamps it: the instance's project
            event = dataclasses.replace(event, project_id="8f6b2c1d4e7a4b0c9d3e5f7a1b2c4d6e")
        out[name] = {
            **event_as_json(event),
            "id": str(uuid.UUID(int=n + 1)),
            "seq": n + 1,
        }
    return out
