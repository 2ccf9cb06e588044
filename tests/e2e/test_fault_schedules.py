"""A fixed handful of randomized fault schedules against a real vigil-server (S1-S3).

Each seed is one schedule of ``vigil.sim.schedules``: a real server subprocess on SQLite,
real heartbeats, faults at set times, then the simulated cloud's ground truth must show
no violation (never two copies, no healthy host fenced, every keep-running instance
running again, every recovery ended, no evacuation aimed at a host known down).

The seeds were picked from ``bench/fault_schedules.py`` runs to cover BMC and
self-fencing, reboots, hangs, several hosts at once and a killed server. Those that still
show a known engine defect are ``xfail`` (not strict) with the finding named (the
findings are described in the report of issue 12); when the engine fix lands they pass
and the mark should go.

They run two at a time in worker processes, with the bench's timing: the configuration
``bench/fault_schedules.py --jobs 2`` and ``--jobs 3`` ran hundreds of schedules with, these
seeds among them, without a violation. About two and a half minutes in all (five, one at
a time).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import pytest
from support.schedules import problems

pytestmark = pytest.mark.slow

JOBS = 2  # schedules at once, each a vigil-server process and its simulated cloud

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


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[int, Future[list[str]]]]:
    """The schedules of the seeds this session runs, started JOBS at a time."""
    seeds = [
        item.callspec.params["seed"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    base = tmp_path_factory.mktemp("schedules")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, as the bench
    with ProcessPoolExecutor(JOBS, mp_context=context) as pool:
        yield {seed: pool.submit(problems, seed, str(base / f"seed-{seed}")) for seed in seeds}


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(s, marks=pytest.mark.xfail(reason=why, strict=False)) if why else s
        for s, why in SEEDS.items()
    ],
)
def test_schedule_has_no_violation(seed: int, runs: dict[int, Future[list[str]]]) -> None:
    found = runs[seed].result(timeout=600)
    assert not found, "\n".join(found)
