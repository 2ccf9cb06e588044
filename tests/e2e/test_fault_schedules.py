"""A fixed handful of randomized fault schedules against a real vigil-server (S1-S3).

Each seed is one schedule of ``vigil.sim.schedules``: a real server subprocess on SQLite,
real heartbeats, faults at set times, then the simulated cloud's ground truth must show
no violation (never two copies, no healthy host fenced, every keep-running instance
running again, every recovery ended, no evacuation aimed at a host known down).

The seeds were picked from ``bench/fault_schedules.py`` runs to cover BMC and
self-fencing, reboots, hangs, several hosts at once and a killed server. Those that still
show a known engine defect are ``xfail`` (not strict) with the finding named (the
findings are described in the report of issue 12); when the engine fix lands they pass
and the mark should go. About five minutes in all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.sim.schedules import Timing, generate, run_schedule

pytestmark = pytest.mark.slow

# The bench's timing with a shorter settle bound: a few minutes for the whole set.
TIMING = Timing(settle_bound=25.0)

# seed -> known defect it still shows (None: must pass). What each covers:
# 1 self-fence, agent crash (watchdog reset, evacuated instances started again);
# 3 a power blip (with the boot that follows, longer than detection) + lost evacuations;
# 6 self-fence, two power losses at once and a hang (the reset host must not take
#   evacuations that vigil then moves again: double run, F1);
# 20 BMC + self-fence, isolation then SIGKILL of the server (reset while cut off, Nova
#   still says ACTIVE: hard-rebooted);
# 26 BMC + self-fence, lost evacuations, an unreachable BMC, a host cut from the server;
# 13, 18 the storm guard pauses a recovery while its host reboots (F5, fixed);
# 80 an evacuation aimed at a host that dies right after (the rebuild waits in its queue
#   and is carried out when it is back, F7);
# 187 a host reset while isolated comes back during a storm-guard pause (its reboot
#   recovery is neither withdrawn nor held, F10);
# 296 vigil-server killed while two of three hosts are fenced: the third, alone, resets by
#   design (no quorum) and gets its instances back as a rebooted host.
SEEDS: dict[int, str | None] = {
    1: None,
    3: None,
    6: None,
    20: None,
    26: None,
    13: None,
    18: None,
    80: None,
    187: None,
    296: None,
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
