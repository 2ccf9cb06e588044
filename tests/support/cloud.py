"""The simulated cloud on a fake clock: what every in-process world stands on (the
contract worlds of tests/contract use it alone; ``support.world`` builds vigil beside it).

Nova is the simulated one (``SimCloud`` through ``SimCompute``), which the compute
contract (tests/contract/compute_contract.py) holds to Nova's rules. A test that needs
Nova slow, stuck or failing uses the cloud's own faults, or passes ``compute=`` a small
subclass of ``SimCompute`` that is wrong in just that way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from vigil.clock import FakeClock
from vigil.drivers.compute import ComputeDriver
from vigil.sim.cloud import SimCloud, SimLatency
from vigil.sim.drivers import SimCompute

TICK = 0.05  # fake seconds a step of advance_until (and a tick of a World)


def until(
    clock: FakeClock,
    condition: Callable[[], object],
    what: str,
    timeout: float,
    step: Callable[[], None],
) -> None:
    """Call ``step`` until ``condition()`` holds; fail once ``timeout`` seconds of
    ``clock`` have passed without it."""
    start = clock.monotonic()
    while not condition():
        if clock.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} fake seconds waiting for {what}")
        step()


class FakeTimeCloud:
    """The simulated cloud on a ``FakeClock`` (``start``: its wall time), with ``hosts``.

    ``compute`` is the cloud's compute driver, ``compute(cloud)``: ``SimCompute`` or a
    test's subclass of it. Latency is zero unless given; what a latency would block
    (``api_call``, ``bmc_timeout``, ``rpc_timeout``) advances the fake clock instead.
    ``cloud_options`` go to ``SimCloud`` (``evacuate_leaves_stopped``, ``seed``, ...).
    """

    def __init__(
        self,
        hosts: Iterable[str] = (),
        *,
        latency: SimLatency | None = None,
        start: float | None = None,
        compute: Callable[[SimCloud], ComputeDriver] = SimCompute,
        **cloud_options: Any,
    ) -> None:
        self.clock = FakeClock() if start is None else FakeClock(start)
        self.cloud = SimCloud(
            self.clock,
            latency=latency if latency is not None else SimLatency.zero(),
            sleep=self.clock.advance,
            **cloud_options,
        )
        for host in hosts:
            self.cloud.add_host(host)
        self.compute = compute(self.cloud)

    def advance_until(
        self, condition: Callable[[], object], what: str, timeout: float, *, step: float = TICK
    ) -> None:
        """Let fake time pass, ``step`` seconds at a time, until ``condition()`` holds;
        fail once ``timeout`` fake seconds have passed without it."""
        until(self.clock, condition, what, timeout, lambda: self.clock.advance(step))
