"""A stand-in ClusterLabs fence agent for the ``fence-agent`` driver's own tests.

Reads ``name=value`` lines on standard input like the real agents, keeps the power of
its one "plug" in ``state_file`` and appends what it was given (its argv and the names
and values it read) to ``record_file``. ``mode`` changes its behaviour: ``honest``
(default), ``lies`` (``off`` exits 0, the power stays on), ``hang`` (sleeps until
killed, after starting a child that sleeps too), ``login`` (fails like the fencing
library does on a refused login), ``broken`` (exit 1 with an error line).
Prints its metadata for ``-o metadata``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_fake" shortdesc="fake agent for tests">
<parameters>
  <parameter name="action"/><parameter name="state_file"/><parameter name="record_file"/>
  <parameter name="mode"/><parameter name="password"/><parameter name="username"/>
  <parameter name="ip"/><parameter name="plug"/>
</parameters>
<actions><action name="on"/><action name="off"/><action name="status"/></actions>
</resource-agent>
"""


def main() -> int:
    if sys.argv[1:] == ["-o", "metadata"]:
        print(METADATA)
        return 0
    options: dict[str, str] = {}
    for line in sys.stdin.read().splitlines():
        if "=" in line:
            name, value = line.split("=", 1)
            options[name] = value
    if options.get("record_file"):
        with open(options["record_file"], "a") as f:
            f.write(json.dumps({"argv": sys.argv, "options": options}) + "\n")
    state = Path(options["state_file"])
    mode = options.get("mode", "honest")
    action = options.get("action", "")
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        Path(options["state_file"] + ".child").write_text(str(child.pid))
        time.sleep(300)
    if mode == "login":
        print(
            "2026-01-01 00:00:00,000 ERROR: Unable to connect/login to fencing device",
            file=sys.stderr,
        )
        return 1
    if mode == "broken":
        print("2026-01-01 00:00:00,000 ERROR: Failed: something broke", file=sys.stderr)
        return 1
    power = state.read_text().strip() if state.exists() else "on"
    if action == "status":
        print(f"Status: {power.upper()}")
        return 0 if power == "on" else 2
    if action == "off":
        if mode != "lies":
            state.write_text("off")
        return 0
    if action == "on":
        state.write_text("on")
        return 0
    print(f"ERROR: Failed: Unrecognised action '{action}'", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
