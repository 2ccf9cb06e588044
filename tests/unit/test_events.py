"""The event catalogue: a schema and a documented sample for every event type."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from vigil.events import CATALOGUE, make_event, payload_schema, samples

SAMPLES = Path(__file__).resolve().parents[2] / "doc" / "notification_samples"


def test_every_event_type_has_a_committed_current_sample() -> None:
    files = {p.stem for p in SAMPLES.glob("*.json")}
    assert files == set(CATALOGUE)
    for name, sample in samples().items():
        committed = json.loads((SAMPLES / f"{name}.json").read_text())
        assert committed == sample, f"{name}: regenerate with tools/notification-samples"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_sample_validates_against_its_schema(name: str) -> None:
    sample = json.loads((SAMPLES / f"{name}.json").read_text())
    assert sample["event_type"] == name
    jsonschema.Draft202012Validator.check_schema(payload_schema(name))
    jsonschema.validate(sample["payload"], payload_schema(name))


def test_schemas_refuse_what_consumers_could_not_rely_on() -> None:
    good = make_event(
        "vigil.recovery.end", at=1.0, host="c1", recovery_id=3, outcome="failed", reason="x"
    )
    jsonschema.validate(good.payload, payload_schema("vigil.recovery.end"))
    missing = make_event("vigil.recovery.end", at=1.0, host="c1", outcome="failed")
    with pytest.raises(jsonschema.ValidationError, match="recovery_id"):
        jsonschema.validate(missing.payload, payload_schema("vigil.recovery.end"))
    extra = make_event("vigil.recovery.end", at=1.0, host="c1", recovery_id=3, colour="red")
    with pytest.raises(jsonschema.ValidationError, match="colour"):
        jsonschema.validate(extra.payload, payload_schema("vigil.recovery.end"))
    with pytest.raises(KeyError):
        make_event("vigil.made.up", at=1.0)


def test_events_carry_a_fresh_idempotency_key_and_their_host() -> None:
    a = make_event("vigil.host.restored", at=1.0, host="c1")
    b = make_event("vigil.host.restored", at=1.0, host="c1")
    assert a.id != b.id and a.host == "c1" and a.priority == "INFO"
