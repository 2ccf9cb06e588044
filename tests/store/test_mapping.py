"""Rows to records: fields by name, converted by their declared types."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vigil.model import Host, HostState, InstanceFailure, Step, StepKind, StepStatus
from vigil.store.mapping import record_of


def test_enums_tuples_mappings_and_nulls_come_back_typed() -> None:
    row = SimpleNamespace(
        id=7,
        recovery_id=3,
        seq=2,
        kind="evacuate",
        status="running",
        instance_id=None,
        instance_name="db-1",
        priority=5,
        attempts=1,
        next_attempt_at=0.0,
        started_at=None,
        finished_at=None,
        detail="",
        result={"status": "ACTIVE"},
        target_host=None,
        status_before="ACTIVE",
        epoch=3,
    )
    step = record_of(Step, row)
    assert step.kind is StepKind.EVACUATE and step.status is StepStatus.RUNNING
    assert step.instance_id is None and step.result == {"status": "ACTIVE"}
    assert step.result is not row.result  # a copy: the record does not share the row's


def test_given_fields_are_taken_as_they_are_and_a_missing_column_is_an_error() -> None:
    row = SimpleNamespace(
        name="compute-1",
        segment="az1",
        state="up",
        maintenance=False,
        reserved=True,
        state_reason="",
        state_changed_at=1.0,
        boot_id=None,
        id=1,
    )
    host = record_of(Host, row, fencing=())
    assert host.state is HostState.UP and host.fencing == () and host.reserved
    with pytest.raises(AttributeError, match="fencing"):
        record_of(Host, row)
    with pytest.raises(AttributeError):
        record_of(InstanceFailure, row)
