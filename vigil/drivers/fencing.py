"""The fencing interface: turn a host off and prove that it is off.

One ``FenceDevice`` is bound to one host's power control (a BMC, a PDU outlet...), built
from a ``FenceMethod`` (driver name + options) by the driver's factory. A host has an
ordered list of them, its fencing levels. A fence counts only when ``power_status``
reads OFF afterwards: a device that says "done" while the power stays on has failed.
"""

from __future__ import annotations

import abc
import enum


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class FenceDevice(abc.ABC):
    """Power control of one host. Every method may raise a DriverError."""

    #: shown in logs and recovery steps; never contains a secret
    description: str = ""
    #: seconds power_status may take to read OFF after power_off, when the device knows
    #: better than [recovery] fence_confirm_timeout (a self-fence waits for a lease)
    confirm_within: float | None = None
    #: True when a confirmed fence is a reset, the host booting again at once (a
    #: self-fencing watchdog): what Nova puts on it afterwards runs. False: it is held
    #: off, so nothing on it at the confirmation runs, whichever boot it came in.
    resets: bool = False

    @abc.abstractmethod
    def power_off(self) -> None:
        """Request a hard power-off (not a graceful shutdown). Idempotent."""

    @abc.abstractmethod
    def power_on(self) -> None: ...

    @abc.abstractmethod
    def power_status(self) -> PowerState: ...
