"""One fault schedule of ``vigil.sim.schedules``, run in a worker process (tests/e2e runs
them two at a time, as ``bench/fault_schedules.py --jobs`` does): what went wrong, as
text, or nothing."""

from __future__ import annotations

from pathlib import Path

from vigil.sim.schedules import Timing, generate, run_schedule


def problems(seed: int, state_dir: str) -> list[str]:
    """The schedule of ``seed`` against a real vigil-server with the bench's timing; its
    description and violations if the cloud's ground truth shows any, else []."""
    schedule = generate(seed)
    result = run_schedule(schedule, Timing(), state_dir=Path(state_dir), keep=True)
    found = [f"{v.kind}: {v.detail}" for v in result.verdict.violations]
    return [*schedule.describe(), *found] if found else []
