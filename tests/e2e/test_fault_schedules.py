"""A fixed handful of randomized fault schedules against a real vigil-server (S1-S3).

Each seed is one schedule of ``vigil.sim.schedules``: a real server subprocess on SQLite,
real heartbeats, faults at set times, then the simulated cloud's ground truth must show
no violation (never two copies, no healthy host fenced, every keep-running instance
running again, every recovery ended, no evacuation aimed at a host known down).

The seeds were picked from ``bench/fault_schedules.py`` runs to cover BMC and
self-fencing, reboots, hangs, several hosts at once and a killed server. Those that still
show a known engine defect are ``xfail`` (not strict) with the finding named; when the
engine fix lands they pass and the mark should go.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.sim.schedules import Timing, generate, run_schedule

pytestmark = pytest.mark.slow

# The bench's timing with a shorter settle bound: a few minutes for the whole set.
TIMING = Timing(settle_bound=25.0)

# seed -> known defect it still shows (None: must pass).
SEEDS: dict[int, str | None] = {
    2: None,
    4: None,
    5: None,
    1: "F2: an evacuated instance that ran before is left SHUTOFF",
    3: "F3: a rebooted host's stopped HA instances are not started",
    6: "F1: a self-fenced host that rebooted and received instances is evacuated (double run)",
}


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(s, marks=pytest.mark.xfail(reason=why, strict=False)) if why else s
        for s, why in SEEDS.items()
    ],
)
def test_schedule_has_no_violation(seed: int, tmp_path: Path) -> None:
    schedule = generate(seed)
    result = run_schedule(schedule, TIMING, state_dir=tmp_path / f"seed-{seed}", keep=True)
    problems = [f"{v.kind}: {v.detail}" for v in result.verdict.violations]
    assert not problems, "\n".join([*schedule.describe(), *problems])
