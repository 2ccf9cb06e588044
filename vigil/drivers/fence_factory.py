"""From a host's fencing levels (``FenceMethod``: driver name + options) to ``FenceDevice``s.

Drivers: ``redfish`` (sushy), ``ipmi`` (pyghmi) and ``fence-agent`` (any ClusterLabs
``fence_*`` executable); each module documents its options. ``sim`` (a BMC of the
simulated cloud) is validated here but built by whoever has the simulated cloud
(``vigil.sim.drivers``, passed in ``extra_builders``): drivers never import the simulator.

``validate_fence_options`` is pure (no I/O): the API calls it so that a bad fencing
configuration is refused with a 4xx when the host is created, not discovered when the
host has to be fenced. Its problems name options, never their values.

``build_fence_devices`` validates again and raises PermanentError for a configuration
error (unknown driver, missing or malformed option). A level whose configuration is
valid but whose device cannot be made right now — its password file is unreadable, its
fence agent is not installed — becomes an ``UnavailableFenceDevice`` that fails every
call with that reason: the engine records it and goes on to the next level, so one
broken level does not stop a host from being fenced by the others.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from vigil.drivers import fence_agent, ipmi, redfish
from vigil.drivers.errors import DriverError, PermanentError
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.model import FenceMethod, Host

KNOWN_FENCE_DRIVERS: tuple[str, ...] = ("sim", "redfish", "ipmi", "fence-agent")

_VALIDATORS: Mapping[str, Callable[[Mapping[str, str]], list[str]]] = {
    "redfish": redfish.validate,
    "ipmi": ipmi.validate,
    "fence-agent": fence_agent.validate,
}
_BUILDERS: Mapping[str, Callable[[str, Mapping[str, str]], FenceDevice]] = {
    "redfish": redfish.build,
    "ipmi": ipmi.build,
    "fence-agent": fence_agent.build,
}


def _validate_sim(options: Mapping[str, str]) -> list[str]:
    # The simulated BMC reads only ``host``; other options are accepted and ignored, so
    # tests can put secrets into a sim level and check that they are never shown.
    if "host" in options and not options["host"].strip():
        return ["sim: option host must not be empty"]
    return []


#: Builds a level of a driver defined outside this package (vigil-server's ``self-fence``,
#: whose device lives in the engine; ``sim``, whose device lives with the simulated
#: cloud): ``(host name, options) -> FenceDevice``.
ExtraBuilder = Callable[[str, Mapping[str, str]], FenceDevice]


def validate_fence_options(
    driver: str, options: Mapping[str, str], *, extra_drivers: Collection[str] = ()
) -> list[str]:
    """Problems with one fencing level (an empty list when it is valid). Pure.

    ``extra_drivers`` are accepted as they are: their options are their owner's to check.
    """
    if driver == "sim":
        return _validate_sim(options)
    if driver in extra_drivers:
        return []
    validator = _VALIDATORS.get(driver)
    if validator is None:
        known = ", ".join([*KNOWN_FENCE_DRIVERS, *extra_drivers])
        return [f"unknown fencing driver {driver!r} (known: {known})"]
    return validator(options)


def validate_fencing(
    methods: Sequence[FenceMethod], *, extra_drivers: Collection[str] = ()
) -> list[str]:
    """Problems with a host's fencing levels, each prefixed with its level number."""
    return [
        f"level {level}: {problem}"
        for level, method in enumerate(methods, start=1)
        for problem in validate_fence_options(
            method.driver, method.options, extra_drivers=extra_drivers
        )
    ]


class UnavailableFenceDevice(FenceDevice):
    """A valid fencing level whose device could not be made: every call fails with why."""

    def __init__(self, driver: str, error: DriverError) -> None:
        self.error = error
        self.description = f"{driver} (unavailable)"

    def _fail(self) -> PowerState:
        raise type(self.error)(str(self.error))

    def power_off(self) -> None:
        self._fail()

    def power_on(self) -> None:
        self._fail()

    def power_status(self) -> PowerState:
        return self._fail()


def build_fence_devices(
    host_name: str,
    methods: Sequence[FenceMethod],
    *,
    extra_builders: Mapping[str, ExtraBuilder] | None = None,
) -> list[FenceDevice]:
    """One device per fencing level, in order.

    Raises PermanentError for an invalid configuration (naming the level and the option,
    never a value) and for ``sim`` levels without a simulated cloud's builder.
    ``extra_builders`` make the levels of drivers defined elsewhere (``{"self-fence":
    ...}``, ``vigil.sim.drivers.sim_fence_builder(cloud)``).
    """
    extra = extra_builders or {}
    problems = validate_fencing(methods, extra_drivers=tuple(extra))
    if problems:
        raise PermanentError(f"host {host_name}: fencing {problems[0]}")
    devices: list[FenceDevice] = []
    for level, method in enumerate(methods, start=1):
        if method.driver in extra:
            devices.append(extra[method.driver](host_name, method.options))
            continue
        if method.driver == "sim":
            raise PermanentError(
                f"host {host_name}: fencing level {level}: the sim driver needs the simulated cloud"
            )
        try:
            devices.append(_BUILDERS[method.driver](host_name, method.options))
        except DriverError as exc:
            devices.append(UnavailableFenceDevice(method.driver, exc))
    return devices


def fence_device_factory(
    *,
    extra_builders: Mapping[str, ExtraBuilder] | None = None,
) -> Callable[[Host], list[FenceDevice]]:
    """What ``VigilServer(fence_devices=...)`` takes: a host's levels built on each call
    (so a rotated password file is read again at the next fence)."""

    def devices(host: Host) -> list[FenceDevice]:
        return build_fence_devices(host.name, host.fencing, extra_builders=extra_builders)

    return devices
