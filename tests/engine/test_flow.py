"""The recovery flow as data: every step kind has its runner, scope and Masakari task."""

from __future__ import annotations

from vigil.engine.flow import (
    HOST_FAILURE_FLOW,
    HOST_REBOOTED_FLOW,
    HOST_STEPS,
    MASAKARI_TASKS,
    STEPS,
)
from vigil.model import StepKind


def test_every_step_kind_has_an_entry_and_each_flow_opens_host_steps() -> None:
    assert set(STEPS) == set(StepKind)
    assert set(HOST_FAILURE_FLOW) <= set(HOST_STEPS)
    assert set(HOST_REBOOTED_FLOW) <= set(HOST_STEPS)
    # the fence gates force-down, which gates the planning
    order = [k for k in HOST_STEPS if k in HOST_FAILURE_FLOW]
    assert order.index(StepKind.FENCE) < order.index(StepKind.FORCE_DOWN)
    assert order.index(StepKind.FORCE_DOWN) < order.index(StepKind.LIST_INSTANCES)


def test_masakari_sees_its_own_task_names_in_its_order() -> None:
    assert [name for name, _ in MASAKARI_TASKS] == [
        "FenceHostTask",
        "DisableComputeServiceTask",
        "PrepareHAEnabledInstancesTask",
        "EvacuateInstancesTask",
    ]
    assert dict(MASAKARI_TASKS)["EvacuateInstancesTask"] == (StepKind.EVACUATE,)
