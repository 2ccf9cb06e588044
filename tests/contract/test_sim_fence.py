"""The fencing contract on the simulated BMCs, in-process and over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fence_contract import FenceContract
from .sim_worlds import KINDS, SimFenceWorld, build_fence_world, sim_rig


class TestSimFence(FenceContract):
    @pytest.fixture(params=KINDS)
    def fence_world(self, request: pytest.FixtureRequest) -> Iterator[SimFenceWorld]:
        with sim_rig(str(request.param)) as rig:
            yield build_fence_world(rig)
