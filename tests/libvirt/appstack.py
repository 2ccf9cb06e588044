"""vigil's application checks end to end in one process, against real guests: the
server side (a migrated SQLite store, ``AppHealth`` over the simulated Nova in real
time, its cycle run by a ``Loop`` on a thread, ``POST /v1/agents/{host}/app`` served by
a real uvicorn on 127.0.0.1) and the agent side (a real ``AppChecks`` speaking to the
guests' real QEMU guest agents through libvirt, and to that server over HTTP).

Used by ``test_app_e2e.py`` and ``bench/app_failure.py``. Not a conftest: the bench
imports it (``tests/libvirt`` on ``sys.path``, as ``lvstack``).

The simulated cloud holds one host (``HOST``) and, for each real guest, an instance
whose id is the guest's domain UUID and whose metadata declares its checks: Nova's
side of the guest. Its reboots are recorded (``cloud.calls("reboot", uuid)``), not
done to the real guest.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn
from bmc.emulators import LIBVIRT_URI, free_port
from fastapi import FastAPI
from support import new_store, wait_until

from vigil.agent.app_checks import AppChecks, GuestChannel, LibvirtConnection
from vigil.agent.guest_agent import GuestAgent
from vigil.api.apps import add_app_routes
from vigil.clock import SystemClock
from vigil.drivers.compute import ComputeDriver
from vigil.engine.app_engine import AppHealth
from vigil.engine.reconciler import Loop
from vigil.model import AppInstance, Event, HaPolicy, Host, Segment
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute
from vigil.wire.keys import host_key

HOST = "compute-app-e2e"
KEY = "agent-key-for-app-e2e"


class AppStack:
    """The server side and one agent; ``instances``: domain UUID -> its metadata
    (``vigil:check:*``, ``vigil:app_recovery``). ``agent_options`` go to ``AppChecks``
    (``on_run=``, ``workers=``...); ``guest_agent``: what the agent reaches the guests'
    agents with (default: ``GuestAgent``); ``compute``: Nova's side, built on the
    simulated cloud (default ``SimCompute``). Start with ``with``; leaving stops
    everything."""

    def __init__(
        self,
        tmp_path: Path,
        instances: Mapping[str, Mapping[str, str]],
        *,
        policy: HaPolicy | None = None,
        tick: float = 0.2,
        uri: str = LIBVIRT_URI,
        guest_agent: GuestChannel | None = None,
        compute: Callable[[SimCloud], ComputeDriver] = SimCompute,
        **agent_options: Any,
    ) -> None:
        self.clock = SystemClock()
        self.store = new_store(tmp_path, Segment("app-e2e"), [Host(HOST, "app-e2e")])
        self.cloud = SimCloud(self.clock)
        self.cloud.add_host(HOST, capacity=max(20, len(instances)))
        for n, (uuid, metadata) in enumerate(instances.items()):
            self.cloud.add_instance(f"app-{n}", HOST, id=uuid, policy=policy, metadata=metadata)
        self.apps = AppHealth(
            store=self.store, compute=compute(self.cloud), clock=self.clock, key=KEY.encode()
        )
        self.loop = Loop("app-e2e", [self.apps], tick=tick)
        self.apps.set_wake(self.loop.wake)
        app = FastAPI()
        add_app_routes(app, apps=self.apps, agent_key=KEY, known_host=lambda h: h == HOST, auth=[])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", log_config=None
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="app-e2e-api", daemon=True)
        self.connection = LibvirtConnection(uri)
        self.agent = AppChecks(
            host=HOST,
            connection=self.connection,
            guest_agent=guest_agent or GuestAgent(self.connection),
            key=host_key(KEY, HOST).encode(),  # the server holds KEY, the master
            server_url=self.url,
            **agent_options,
        )
        self._stops: list[Callable[[], None]] = []

    def __enter__(self) -> Self:
        try:
            self.loop.start()
            self._stops.append(self.loop.close)
            self._thread.start()
            self._stops.append(self._stop_server)
            wait_until(lambda: self._server.started, "the app check API", 10, every=0.05)
            self.agent.start()
            self._stops.append(self.agent.stop)
        except BaseException:
            self.close()
            raise
        return self

    def _stop_server(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def close(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                stop()
        self._stops.clear()
        self.apps.stop()
        self.connection.close()
        self.store.close()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- reading the server's side ------------------------------------------------------

    def events(self, instance_id: str, after: int = 0) -> list[Event]:
        """The instance's ``vigil.app.*`` events with seq > ``after``, oldest first."""
        return [
            e
            for e in self.store.list_events(after=after, limit=100_000)
            if e.instance_id == instance_id and e.event_type.startswith("vigil.app.")
        ]

    def event_types(self, instance_id: str, after: int = 0) -> list[str]:
        return [e.event_type for e in self.events(instance_id, after)]

    def instance(self, instance_id: str) -> AppInstance:
        inst = self.store.get_app_instance(instance_id)
        assert inst is not None, f"the server has no application checks of {instance_id}"
        return inst
