"""The fencing contract: what every FenceDevice must do before vigil trusts it with S1.

Reuse: subclass ``FenceContract`` and define a ``fence_world`` fixture returning a
``FenceWorld``: a device bound to a target that is powered on when the test starts (a
simulated BMC, a Redfish or IPMI emulator, a ``fence_*`` agent against one), and, where
the implementation can produce one, a device whose BMC cannot be reached (a closed port,
an address nobody answers on). The fixture powers the target back on afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import pytest

from vigil.drivers.errors import DriverError, TemporaryError
from vigil.drivers.fencing import FenceDevice, PowerState


class FenceWorld(Protocol):
    @property
    def device(self) -> FenceDevice:
        """Bound to a target that is powered on at the start of each test."""

    @property
    def unreachable(self) -> FenceDevice | None:
        """A device whose BMC does not answer; None if it cannot be staged (tests skip)."""

    @property
    def timeout(self) -> float:
        """How long a power change may take to read back, in seconds."""

    @property
    def secrets(self) -> Sequence[str]:
        """Passwords and keys in the device's options: they must never be shown."""

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        """Return once ``condition()`` holds; fail after ``timeout`` of the world's time."""


class FenceContract:
    def _wait_for(self, world: FenceWorld, state: PowerState) -> None:
        world.wait_until(
            lambda: world.device.power_status() == state,
            f"{world.device.description} reads {state.value}",
            world.timeout,
        )

    def test_description_names_the_device_without_secrets(self, fence_world: FenceWorld) -> None:
        description = fence_world.device.description
        assert description.strip()
        for secret in fence_world.secrets:
            assert secret not in description

    def test_target_starts_on(self, fence_world: FenceWorld) -> None:
        assert fence_world.device.power_status() == PowerState.ON

    def test_power_off_reads_off(self, fence_world: FenceWorld) -> None:
        fence_world.device.power_off()
        self._wait_for(fence_world, PowerState.OFF)
        assert fence_world.device.power_status() == PowerState.OFF, "and stays off"

    def test_power_off_is_idempotent(self, fence_world: FenceWorld) -> None:
        device = fence_world.device
        device.power_off()
        device.power_off()  # again before it reads OFF
        self._wait_for(fence_world, PowerState.OFF)
        device.power_off()  # and once it is off
        assert device.power_status() == PowerState.OFF

    def test_power_on_after_off_reads_on(self, fence_world: FenceWorld) -> None:
        fence_world.device.power_off()
        self._wait_for(fence_world, PowerState.OFF)
        fence_world.device.power_on()
        self._wait_for(fence_world, PowerState.ON)

    def test_unreachable_bmc_is_a_temporary_error(self, fence_world: FenceWorld) -> None:
        device = fence_world.unreachable
        if device is None:
            pytest.skip("this implementation cannot stage an unreachable BMC")
        calls: list[Callable[[], object]] = [
            device.power_status,
            device.power_off,
            device.power_on,
        ]
        for call in calls:
            with pytest.raises(TemporaryError) as caught:
                call()
            for secret in fence_world.secrets:
                assert secret not in str(caught.value)

    def test_errors_are_driver_errors(self, fence_world: FenceWorld) -> None:
        # Anything else escaping a device would crash the engine's step instead of
        # being retried or reported.
        device = fence_world.unreachable
        if device is None:
            pytest.skip("this implementation cannot stage an unreachable BMC")
        try:
            device.power_status()
        except Exception as exc:
            assert isinstance(exc, DriverError)
        else:
            pytest.fail("an unreachable BMC answered")
