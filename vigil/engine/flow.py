"""The recovery flow as data: every step kind, what runs it, where it shows.

A recovery is a list of persisted steps (``vigil.model.Step``). ``STEPS`` says, for
each kind, the function that performs it (``vigil.engine.steps``), whether it acts on
the host or on one instance, and the Masakari task it is shown as in a notification's
``recovery_workflow_details`` (None: not shown there). The flows say which steps a
declaration opens; ``vigil.engine.decide`` orders and gates them by ``HOST_STEPS``;
instance steps are planned by the host steps' results.

Adding a step: its kind in ``vigil.model.StepKind``, its function in
``vigil.engine.steps``, and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from vigil.drivers.errors import PermanentError
from vigil.engine import steps
from vigil.engine.steps import Done, StepContext
from vigil.model import Host, Recovery, Segment, Step, StepKind


@dataclass(frozen=True)
class StepInput:
    """What a step runs on: the step itself, its recovery, its host and segment."""

    step: Step
    recovery: Recovery
    host: Host
    segment: Segment


#: Performs one step; raises TemporaryError (retried) or PermanentError (given up).
Runner = Callable[[StepContext, StepInput], Done]


@dataclass(frozen=True)
class StepSpec:
    run: Runner
    scope: Literal["host", "instance"]
    masakari_task: str | None = None


def _notify(_ctx: StepContext, given: StepInput) -> Done:
    step = given.step
    return Done(f"instance {step.instance_name} ({step.instance_id}): owner notified")


# In the order Masakari's workflow shows its tasks.
STEPS: Mapping[StepKind, StepSpec] = {
    # reads the instances and their states before anything acts; gates only the planning
    StepKind.RECORD_INSTANCES: StepSpec(
        lambda ctx, given: steps.record_instances(ctx, given.host), "host"
    ),
    # vigil's own task: Masakari does not fence
    StepKind.FENCE: StepSpec(
        lambda ctx, given: steps.fence(ctx, given.host), "host", "FenceHostTask"
    ),
    StepKind.FORCE_DOWN: StepSpec(
        lambda ctx, given: steps.force_down(ctx, given.host), "host", "DisableComputeServiceTask"
    ),
    StepKind.LIST_INSTANCES: StepSpec(
        lambda ctx, given: steps.plan_instances(ctx, given.host, given.segment, given.recovery),
        "host",
        "PrepareHAEnabledInstancesTask",
    ),
    StepKind.EVACUATE: StepSpec(
        lambda ctx, given: steps.evacuate(
            ctx, given.step, given.recovery, given.host, given.segment
        ),
        "instance",
        "EvacuateInstancesTask",
    ),
    StepKind.NOTIFY: StepSpec(_notify, "instance"),
    # a host that rebooted without a declared failure: plan a start per stopped instance
    StepKind.FIND_STOPPED: StepSpec(
        lambda ctx, given: steps.plan_restarts(ctx, given.host, given.segment), "host"
    ),
    StepKind.START: StepSpec(
        lambda ctx, given: steps.start_again(ctx, given.step, given.host), "instance"
    ),
}

#: The host-level steps, in the order they gate one another.
HOST_STEPS: tuple[StepKind, ...] = tuple(k for k, s in STEPS.items() if s.scope == "host")
#: What a declared host failure opens (the instance steps follow from list-instances).
HOST_FAILURE_FLOW = (
    StepKind.RECORD_INSTANCES,
    StepKind.FENCE,
    StepKind.FORCE_DOWN,
    StepKind.LIST_INSTANCES,
)
#: What a host that rebooted without a declared failure opens.
HOST_REBOOTED_FLOW = (StepKind.FIND_STOPPED,)
#: Masakari's task names, with the step kinds each shows.
MASAKARI_TASKS: tuple[tuple[str, tuple[StepKind, ...]], ...] = tuple(
    (s.masakari_task, (k,)) for k, s in STEPS.items() if s.masakari_task is not None
)


def run_step(ctx: StepContext, given: StepInput) -> Done:
    """Perform one step. Raises TemporaryError (retry later) or PermanentError (give up)."""
    spec = STEPS.get(given.step.kind)
    if spec is None:
        raise PermanentError(f"unknown step kind {given.step.kind}")
    return spec.run(ctx, given)
