"""vigil-server for the network-namespace test, run inside the server's namespace:

    ip netns exec NS python tests/netns/world.py STATE_DIR HOSTS SETTINGS_JSON

A real ``VigilServer`` (API on the namespace's loopback, heartbeats on every address of
the namespace) on a simulated cloud with ``HOSTS`` compute hosts in one segment, each
fenced by its watchdog only (``self-fence``). Prints ``READY`` when the hosts are
registered, and runs until its standard input closes.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx

from vigil.clock import SystemClock
from vigil.config import DetectionSettings, SelfFencingSettings, Settings
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud, SimLatency

TOKEN = "netns-token"
KEY = "netns-agent-key"
HEARTBEAT_PORT = 8788


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(created).3f %(levelname)s %(message)s")
    state, hosts, sf = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    cloud = SimCloud(SystemClock(), latency=SimLatency.zero())
    names = [f"compute-{i}" for i in range(1, hosts + 1)]
    for name in names:
        cloud.add_host(name)
    settings = Settings(
        database_url=f"sqlite:///{state / 'vigil.db'}",
        api_port=0,
        heartbeat_host="0.0.0.0",
        heartbeat_port=HEARTBEAT_PORT,
        api_token=TOKEN,
        agent_key=KEY,
        detection=DetectionSettings(),
        self_fencing=SelfFencingSettings(**sf),
    )
    settings.validate()
    server = VigilServer(settings, cloud=cloud)
    server.start()
    api = httpx.Client(base_url=server.api_url, headers={"Authorization": f"Bearer {TOKEN}"})
    api.post("/v1/segments", json={"name": "rack"}).raise_for_status()
    for name in names:
        api.post(
            "/v1/hosts",
            json={"name": name, "segment": "rack", "fencing": [{"driver": "self-fence"}]},
        ).raise_for_status()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
