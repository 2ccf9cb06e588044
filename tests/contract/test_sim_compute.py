"""The compute contract on the simulated cloud: in-process (also with Nova >= 2.95's
stopped evacuations) and through RemoteCloud over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .compute_contract import ComputeContract
from .sim_worlds import SimComputeWorld, build_compute_world, sim_rig


class TestSimCompute(ComputeContract):
    @pytest.fixture(params=["in-process", "in-process-2.95", "over-http"])
    def compute_world(self, request: pytest.FixtureRequest) -> Iterator[SimComputeWorld]:
        kind = str(request.param)
        leaves_stopped = kind.endswith("-2.95")
        with sim_rig(kind.removesuffix("-2.95"), evacuate_leaves_stopped=leaves_stopped) as rig:
            yield build_compute_world(rig)
            # The contract always fails a host before evacuating from it.
            assert rig.cloud.double_running() == []
