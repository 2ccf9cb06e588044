"""Benchmark: libvirt event → failure recorded → action issued, on real QEMU guests.

Tiny guests (``tests/libvirt/tinyguest.py``) that panic a second after booting run on the
machine's libvirtd (software emulation) with policy keep-running and a large restart
budget, so each one crash-loops: panic → CRASHED event → the agent's monitor → a signed
HTTP report → persisted with its event → the rule → restart issued through the compute
driver (here libvirt itself) → boot → panic again (~12 s a round).

For each crash three moments are taken on this machine's wall clock: the agent receiving
libvirt's event (``report.at``), the report persisted (the timestamp of its
``vigil.instance.guest.failure`` event, written in the same transaction) and the restart
issued (its ``vigil.instance.guest.restart.start`` event, written before the driver call).

    .venv/bin/python bench/guest_event_latency.py [--guests 3] [--duration 90] [--out FILE]

Needs what ``tools/libvirt/setup`` installs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "libvirt"))

from bmc.emulators import LIBVIRT_URI, Libvirt  # noqa: E402
from lvstack import GuestFiles, make_stack  # noqa: E402
from tinyguest import build_guest  # noqa: E402

from vigil.engine.guest import GuestPolicy, GuestSettings  # noqa: E402
from vigil.model import HaPolicy  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "min_ms": round(min(ms), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=3)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of crash loops")
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "guest_event_latency.json")
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    Libvirt.check()
    libvirt = Libvirt()
    libvirt.start()
    workdir = Path(f"/var/tmp/vigil-guest-bench-{os.getpid()}")
    try:
        kernel, initrd = build_guest(workdir)
        files = GuestFiles(kernel, initrd, workdir)
        with tempfile.TemporaryDirectory() as tmp:
            stacks = make_stack(Path(tmp), files, LIBVIRT_URI)
            stack = next(stacks)
            # Budget large enough never to run out; backoff negligible, so the restart is
            # issued as soon as the rule has decided.
            stack.guest.settings = GuestSettings(
                restart_budget=10_000, backoff_base=0.001, backoff_max=0.001, quiet_after=600
            )
            domains = [stack.define("panic", on_crash="destroy") for _ in range(args.guests)]
            for dom in domains:
                stack.policies[dom.UUIDString()] = GuestPolicy(HaPolicy.KEEP_RUNNING)
                dom.create()
            time.sleep(args.duration)
            events = stack.store.list_events(limit=100_000)
            next(stacks, None)  # tear the stack down
    finally:
        libvirt.stop()

    failures = [e for e in events if e.event_type == "vigil.instance.guest.failure"]
    starts = sorted(
        (e for e in events if e.event_type == "vigil.instance.guest.restart.start"),
        key=lambda e: e.seq,
    )
    by_instance: dict[str, list[Any]] = {}
    for e in starts:
        by_instance.setdefault(e.instance_id or "", []).append(e)
    recorded: list[float] = []
    issued: list[float] = []
    for failure in failures:
        observed_at = failure.payload["vigil_object.data"]["observed_at"]
        recorded.append(failure.timestamp - observed_at)
        later = [s for s in by_instance.get(failure.instance_id or "", []) if s.seq > failure.seq]
        if later:
            issued.append(later[0].timestamp - observed_at)
    result = {
        "benchmark": "guest_event_latency",
        "what": "libvirt CRASHED event at the agent → failure persisted → restart issued",
        "command": f".venv/bin/python bench/guest_event_latency.py --guests {args.guests} "
        f"--duration {args.duration:g}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "guests": args.guests,
        "crashes": len(failures),
        "event_to_recorded": summary(recorded),
        "event_to_action_issued": summary(issued),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
