"""A heartbeat receiver on an ephemeral UDP port of this machine, verifying with the
agent keys of one master key and knowing only the given hosts.

    with receiving("master", ("compute-1",), process=True) as (rx, table):
        socket.sendto(encode(beat, host_key("master", "compute-1").encode()), rx.address)
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

from vigil.clock import SystemClock
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.wire.keys import AgentKeys


@contextmanager
def receiving(
    master: str, hosts: Collection[str], *, process: bool
) -> Iterator[tuple[HeartbeatReceiver, HeartbeatTable]]:
    """A started receiver and the table it records into, reading on a thread of this
    process or, with ``process``, in a child process (what vigil-server runs). Stopped
    on the way out."""
    table = HeartbeatTable(SystemClock())
    rx = HeartbeatReceiver(
        table,
        keys=AgentKeys([master]),
        known_host=lambda h: h in hosts,
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        process=process,
    )
    rx.start()
    try:
        yield rx, table
    finally:
        rx.stop()
