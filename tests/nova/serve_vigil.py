"""vigil-server as a process on the minicloud, for the tests that kill one: what
``python -m vigil.server`` runs (its configuration, the openstack compute driver on
the minicloud's clouds.yaml, its coordination), except that each host's fence device is
its nova-compute process (``ProcessFence``), as in the tier's in-process tests: the
minicloud's computes have no BMC.

    python tests/nova/serve_vigil.py --config-file vigil-0.conf
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # tests/: nova.cloud, support

from nova.cloud import Minicloud, ProcessFence, renew_tokens_late  # noqa: E402
from vigil import config  # noqa: E402
from vigil.drivers.fencing import FenceDevice  # noqa: E402
from vigil.model import Host  # noqa: E402
from vigil.server import VigilServer  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = config.settings_from_conf(config.load(sys.argv[1:]))
    renew_tokens_late()  # as in the test process: the tier's tokens last 20 s
    cloud = Minicloud(started_here=False, startup_seconds=0.0)

    def fences(host: Host) -> list[FenceDevice]:
        return [ProcessFence(cloud, host.name)]

    server = VigilServer(settings, fence_devices=fences)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
