"""The compute interface: what vigil needs from Nova.

Implementations: ``vigil.drivers.openstack`` (Nova through openstacksdk) and
``vigil.sim.drivers.SimCompute`` (the simulated cloud); both pass the contract of
``tests/contract/compute_contract.py``. Status strings are Nova's own (``ACTIVE``, ``SHUTOFF``,
``ERROR``, ``REBUILD``...), so nothing is lost in translation.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from vigil.drivers.errors import PermanentError
from vigil.model import HaPolicy

LOG = logging.getLogger(__name__)

# Nova's server statuses that vigil reasons about.
ACTIVE = "ACTIVE"
SHUTOFF = "SHUTOFF"
ERROR = "ERROR"
REBUILD = "REBUILD"
# Nova evacuates only instances in these states.
EVACUABLE = frozenset({ACTIVE, SHUTOFF, ERROR})

# Server metadata that carries an instance's HA policy. Masakari's key is understood so
# that existing deployments need no re-tagging; vigil's own key wins when both are set.
POLICY_KEY = "vigil:ha_policy"
CLUSTER_KEY = "vigil:cluster"  # the in-guest cluster (vigil.engine.clusters) of a member
PRIORITY_KEY = "vigil:ha_priority"
MASAKARI_KEY = "HA_Enabled"
# vigil's own guest watchdog key, beside Nova's hw:watchdog_action (which refuses values
# it does not know): "notify" asks vigil to publish each firing (vigil.engine.guest).
WATCHDOG_ACTION_KEY = "vigil:watchdog_action"


def ha_policy_from_metadata(metadata: Mapping[str, str]) -> tuple[HaPolicy | None, int]:
    """The (policy, priority) an instance's metadata asks for; policy None if it says nothing.

    Unreadable values count as unset, so a typo falls back to the segment's default.
    """
    policy: HaPolicy | None = None
    raw = metadata.get(POLICY_KEY)
    if raw is not None:
        try:
            policy = HaPolicy(raw.strip().lower())
        except ValueError:
            policy = None
    if policy is None and MASAKARI_KEY in metadata:
        flag = metadata[MASAKARI_KEY].strip().lower()
        if flag == "true":
            policy = HaPolicy.KEEP_RUNNING
        elif flag == "false":
            policy = HaPolicy.OFF
    try:
        priority = int(metadata.get(PRIORITY_KEY, "0"))
    except ValueError:
        priority = 0
    return policy, priority


@dataclass(frozen=True)
class ComputeService:
    """A nova-compute service as Nova reports it."""

    host: str
    up: bool  # Nova's view: reported within service_down_time and not forced down
    forced_down: bool
    disabled: bool
    disabled_reason: str = ""


POWER_RUNNING = 1  # Nova's power_state of a running guest


@dataclass(frozen=True)
class Server:
    """An instance as Nova reports it, with the HA policy read from its metadata.

    ``policy`` is None when neither metadata, flavor nor image says anything: the
    segment's default then applies.
    """

    id: str
    name: str
    host: str | None
    status: str
    policy: HaPolicy | None = None
    priority: int = 0
    task_state: str | None = None
    server_group: str | None = None
    fault: str | None = None  # Nova's fault message, e.g. "No valid host was found"
    # vigil:watchdog_action from the first of metadata, image, flavor that sets it
    watchdog_action: str | None = None
    # Nova's OS-EXT-STS:power_state (1 running, 4 shutdown, ...); None when not reported.
    # After its host reboots, Nova keeps an instance ACTIVE with power_state shutdown
    # until its periodic power sync (10 min) stops it.
    power_state: int | None = None
    # The application checks declared for it (issue 17): the ``vigil:check:*`` and
    # ``vigil:app_recovery`` keys, each from the first of metadata, image, flavor setting it.
    app_keys: Mapping[str, str] = field(default_factory=dict)
    project_id: str | None = None  # its owner's project (Nova's tenant_id)
    cluster: str | None = None  # metadata CLUSTER_KEY: the in-guest cluster it is a member of


APP_CHECK_PREFIX = "vigil:check:"
APP_RECOVERY_KEY = "vigil:app_recovery"


def is_app_key(key: str) -> bool:
    return key.startswith(APP_CHECK_PREFIX) or key == APP_RECOVERY_KEY


def app_keys_of(*sources: Mapping[str, object]) -> dict[str, str]:
    """The application check keys from ``sources`` (metadata, image properties, flavor
    extra specs, in that order): each key from the first source that sets it."""
    out: dict[str, str] = {}
    for source in sources:
        for key, value in source.items():
            if is_app_key(key) and key not in out:
                out[key] = str(value)
    return out


class ComputeDriver(abc.ABC):
    """Nova, as far as HA needs it. Every method may raise a DriverError."""

    @abc.abstractmethod
    def list_services(self) -> list[ComputeService]: ...

    @abc.abstractmethod
    def get_service(self, host: str) -> ComputeService:
        """Raises NotFound for a host without a compute service."""

    @abc.abstractmethod
    def set_forced_down(self, host: str, forced_down: bool) -> None:
        """Force the compute service down (only after the host is fenced) or back up."""

    @abc.abstractmethod
    def disable(self, host: str, reason: str) -> None: ...

    @abc.abstractmethod
    def enable(self, host: str) -> None: ...

    @abc.abstractmethod
    def list_servers(self, host: str) -> list[Server]:
        """All instances Nova places on ``host``, across all projects.

        NotFound for a host without a compute service: Nova itself would answer an empty
        list, which a typo would turn into "nothing to evacuate"."""

    @abc.abstractmethod
    def get_server(self, server_id: str) -> Server:
        """Raises NotFound for an unknown instance."""

    def poll_server(self, server_id: str) -> Server:
        """A read for confirmation polls only — never to decide an action. A driver may
        serve it from a recent shared read of many servers (one Nova call for all the
        evacuations being confirmed rather than one per instance and poll)."""
        return self.get_server(server_id)

    @abc.abstractmethod
    def evacuate(self, server_id: str, target_host: str | None = None) -> None:
        """Ask Nova to rebuild the instance on another host.

        Returns once Nova accepted the request; the rebuild goes on asynchronously and is
        confirmed by reading the server. Nova refuses (Conflict) while the source compute
        service is up and not forced down, and for instances not in EVACUABLE. Nova 34
        accepts a second evacuation of an instance still being rebuilt, though: the caller
        reads the instance just before and asks only when no task is in progress.
        """

    def evacuation_started(self, server_id: str) -> bool | None:
        """For a server Nova shows in REBUILD: did Nova begin the evacuation it accepted?

        Nova's API saves the instance as rebuilding, then casts the rebuild to a conductor;
        an API process that dies between the two (a crash, a kill mid-request) leaves the
        instance in REBUILD for ever, with nothing working on it. False: nothing has picked
        the request up although Nova could (a conductor is up), so it is lost. True: it is
        under way. None: the driver cannot tell, and the evacuation is never re-issued."""
        return None

    def reset_state(self, server_id: str) -> None:
        """Nova's os-resetState to ``error`` (task cleared), so that an evacuation Nova lost
        can be asked for again. Only after ``evacuation_started`` answered False."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset an instance's state")

    @abc.abstractmethod
    def start(self, server_id: str) -> None: ...

    @abc.abstractmethod
    def stop(self, server_id: str) -> None: ...

    @abc.abstractmethod
    def reboot(self, server_id: str, hard: bool = True) -> None: ...

    def rebuild(self, server_id: str) -> None:
        """Rebuild the instance in place from its own image (the last rung of an
        application's recovery ladder: its disk is recreated). A driver that cannot
        raises PermanentError."""
        raise PermanentError(f"{type(self).__name__} cannot rebuild instances")

    # --- building an in-guest cluster (vigil.engine.clusters) ----------------------------
    # Not abstract: a driver that cannot build raises PermanentError, and vigil's HA
    # works without them.

    def create_server_group(self, name: str, policy: str = "anti-affinity") -> str:
        """A new server group with Nova's ``policy``; its id."""
        raise PermanentError(f"{type(self).__name__} cannot create server groups")

    def delete_server_group(self, group_id: str) -> None:
        """Delete it; NotFound when it is gone already."""
        raise PermanentError(f"{type(self).__name__} cannot delete server groups")

    def create_server(
        self,
        *,
        name: str,
        image: str,
        flavor: str,
        port_id: str,
        user_data: str,
        server_group: str,
        metadata: Mapping[str, str],
    ) -> str:
        """Boot an instance on an existing port (its address fixed before it exists), in
        the server group (Nova's scheduler keeps anti-affinity), with cloud-init's
        ``user_data``; returns its id once Nova accepted it (it builds on)."""
        raise PermanentError(f"{type(self).__name__} cannot create instances")

    def delete_server(self, server_id: str) -> None:
        """Delete the instance; NotFound when it is gone already."""
        raise PermanentError(f"{type(self).__name__} cannot delete instances")

    def server_group_members(self, group_id: str) -> list[str]:
        """The instances of the server group (any project's); NotFound for no group."""
        raise PermanentError(f"{type(self).__name__} cannot read server groups")


class ProjectNoting:
    """A compute driver that tells ``note`` the project of every server Nova reports
    (instance id -> project id) before handing the servers on: vigil learns each
    instance's project where it meets the instance anyway (a host's listing in a
    recovery, a guest failure's lookup, the API), with no call of its own to Nova.

    A proxy rather than a subclass: it stands in front of any driver (the real Nova, the
    simulated cloud, a test's fake), and everything but the two readings goes through
    untouched. A failure to note is logged, never raised: the recovery that listed the
    servers goes on, and its events lack the project."""

    def __init__(self, inner: ComputeDriver, note: Callable[[Mapping[str, str]], None]) -> None:
        self._inner = inner
        self._note = note
        self._failing = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _noted(self, servers: list[Server]) -> None:
        known = {s.id: s.project_id for s in servers if s.project_id}
        if not known:
            return
        try:
            self._note(known)
        except Exception as exc:
            if str(exc) != self._failing:
                LOG.warning("instances' projects not recorded (their events lack it): %s", exc)
            self._failing = str(exc)
        else:
            self._failing = ""

    def list_servers(self, host: str) -> list[Server]:
        servers = self._inner.list_servers(host)
        self._noted(servers)
        return servers

    def get_server(self, server_id: str) -> Server:
        server = self._inner.get_server(server_id)
        self._noted([server])
        return server


def noting_projects(
    inner: ComputeDriver, note: Callable[[Mapping[str, str]], None]
) -> ComputeDriver:
    """``inner``, telling ``note`` the projects of the servers it reports."""
    return cast(ComputeDriver, ProjectNoting(inner, note))
