"""vigil's events drive Aodh event alarms: the documented Ceilometer event definitions
turn each notification into traits, and Aodh's own evaluator (run from its virtualenv,
tools/aodh/setup) fires the documented alarms for exactly the events they describe."""

from __future__ import annotations

import json
import subprocess
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonpath_rw_ext import parser
from services import require

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "doc" / "aodh"
SAMPLES = ROOT / "doc" / "notification_samples"
# Ceilometer's trait types, as Aodh receives them.
TRAIT_TYPES = {"text": 1, "int": 2, "float": 3, "datetime": 4}

pytestmark = pytest.mark.aodh


def _setup() -> str:
    out = subprocess.run(
        [str(ROOT / "tools/aodh/setup")], check=True, capture_output=True, text=True, timeout=600
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def aodh_python() -> str:
    found: list[str] = []
    require("Aodh (tools/aodh/setup)", lambda: found.append(_setup()))
    return found[0]


def notification(sample: dict[str, Any]) -> dict[str, Any]:
    """The message Ceilometer's notification agent gets from the bus for this event."""
    return {
        "event_type": sample["event_type"],
        "message_id": sample["id"],
        "payload": sample["payload"],
        "priority": sample["priority"],
        "publisher_id": "vigil-server:ctl-1",
        "timestamp": "2027-01-15 08:00:00.000000",
    }


def to_ceilometer_event(message: dict[str, Any]) -> dict[str, Any]:
    """Apply doc/aodh/vigil-event-definitions.yaml the way Ceilometer's event converter
    does: first JSONPath match per trait, typed; absent traits left out."""
    (definition,) = yaml.safe_load((DOC / "vigil-event-definitions.yaml").read_text())
    traits = []
    for name, spec in definition["traits"].items():
        matches = [
            m.value
            for m in parser.ExtentedJsonPathParser().parse(spec["fields"]).find(message)
            if m.value is not None
        ]
        if matches:
            kind = spec.get("type", "text")
            value = int(matches[0]) if kind == "int" else str(matches[0])
            traits.append([name, TRAIT_TYPES[kind], value])
    return {
        "event_type": message["event_type"],
        "message_id": message["message_id"],
        "traits": traits,
    }


def evaluate(python: str, alarm: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    out = subprocess.run(
        [python, str(ROOT / "tools/aodh/evaluate.py")],
        input=json.dumps({"alarm": alarm, "events": events}),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    fired: list[str] = json.loads(out.stdout)
    return fired


def sample(name: str, **data: Any) -> dict[str, Any]:
    s = deepcopy(json.loads((SAMPLES / f"{name}.json").read_text()))
    s["payload"]["vigil_object.data"].update(data)
    s["id"] = f"{name}:{sorted(data.items())}"
    return s


@pytest.mark.parametrize("name", ["vigil.host.failure.confirmed"])
def test_definitions_extract_the_traits_alarms_query(name: str) -> None:
    event = to_ceilometer_event(notification(sample(name)))
    traits = {t[0]: t[2] for t in event["traits"]}
    assert traits["host"] == "compute-1" and traits["segment"] == "rack-a"
    assert traits["payload_version"] == "1.0"
    step = to_ceilometer_event(notification(sample("vigil.instance.evacuate.end")))
    assert {t[0]: t[2] for t in step["traits"]}["recovery_id"] == 7


def test_aodh_fires_the_host_failed_alarm_for_its_segment_only(aodh_python: str) -> None:
    python = aodh_python
    alarm = json.loads((DOC / "alarm-host-failed.json").read_text())
    rack_a = sample("vigil.host.failure.confirmed")
    rack_b = sample("vigil.host.failure.confirmed", segment="rack-b")
    suspected = sample("vigil.host.failure.suspected")
    events = [to_ceilometer_event(notification(s)) for s in (rack_a, rack_b, suspected)]
    assert evaluate(python, alarm, events) == [rack_a["id"]]


def test_aodh_fires_the_recovery_failed_alarm_on_a_failed_outcome(aodh_python: str) -> None:
    python = aodh_python
    alarm = json.loads((DOC / "alarm-recovery-failed.json").read_text())
    failed = sample("vigil.recovery.end", outcome="failed", reason="fence failed")
    ok = sample("vigil.recovery.end")
    events = [to_ceilometer_event(notification(s)) for s in (ok, failed)]
    assert evaluate(python, alarm, events) == [failed["id"]]
