"""A real masakari-monitors process monitor (PyPI ``masakari-monitors``, installed by
tools/masakari/setup-clients in a virtualenv of its own), watching one process of this
machine and reporting to whatever its ``[api]`` section names: vigil with the static
token (tests/masakari), or the Keystone catalog's instance-ha endpoint (tests/keystone).

The monitor names the host by ``socket.gethostname()``: this machine must be a host of
the cloud the vigil under test watches."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import wait_until

REPO = Path(__file__).resolve().parents[2]
CLIENTS_HOME = Path(os.environ.get("MASAKARI_CLIENTS_HOME") or REPO / ".masakari")
PROCESS_MONITOR = CLIENTS_HOME / "monitors" / "bin" / "masakari-processmonitor"


def installed(path: Path = PROCESS_MONITOR) -> None:
    """A check for services.require: Masakari's clients and monitors are installed."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run tools/masakari/setup-clients")


@dataclass
class WatchedProcess:
    name: str  # the process's name as the monitor reports it
    service: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.service.kill()
        self.service.wait()

    def log_text(self) -> str:
        return self.log.read_text()[-4000:]

    def wait_for_vigil_answer(self) -> None:
        """Until the monitor logs the API's answer to its notification."""
        wait_until(lambda: "Response:" in self.log.read_text(), "the monitor to log vigil's answer")


@contextmanager
def process_monitor(tmp_path: Path, api_section: str) -> Iterator[WatchedProcess]:
    """A process with a unique name, watched by a running process monitor whose restart
    command fails (so it reports the process dead at once), configured with
    ``api_section`` (the ``[api]`` options: how it authenticates and where it posts)."""
    path = f"/opt/vigil-test/nova-compute-{secrets.token_hex(4)}"
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", path])
    (tmp_path / "process_list.yaml").write_text(
        f"""
- process_name: {path}
  start_command: /bin/true
  pre_start_command:
  post_start_command:
  restart_command: /bin/false
  pre_restart_command:
  post_restart_command:
  run_as_root: False
"""
    )
    (tmp_path / "masakarimonitors.conf").write_text(
        f"""
[api]
{api_section.strip()}

[process]
check_interval = 1
restart_retries = 0
restart_interval = 1
api_retry_max = 3
api_retry_interval = 1
process_list_path = {tmp_path / "process_list.yaml"}
"""
    )
    log = tmp_path / "monitor.log"
    with log.open("w") as out:
        monitor = subprocess.Popen(
            [str(PROCESS_MONITOR), "--config-file", str(tmp_path / "masakarimonitors.conf")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    watched = WatchedProcess(path.rsplit("/", 1)[-1], service, log)
    try:
        assert monitor.poll() is None, watched.log_text()
        yield watched
    finally:
        monitor.terminate()
        try:
            monitor.wait(10)
        except subprocess.TimeoutExpired:
            monitor.kill()
            monitor.wait()
        if service.poll() is None:
            service.kill()
            service.wait()
