"""The network contract on the simulated Neutron (vigil.sim.network): the one the demo and
the fast cluster tests use must behave as the real one does (tests/nova runs the same
contract on a real Neutron)."""

from __future__ import annotations

import pytest

from vigil.sim.network import SimNetwork

from .network_contract import NetworkContract


class TestSimNetwork(NetworkContract):
    @pytest.fixture
    def network_driver(self) -> SimNetwork:
        network = SimNetwork()
        network.add_network("private", "10.20.0.0/24")
        return network

    @pytest.fixture
    def network_name(self) -> str:
        return "private"
