"""Benchmark: failure detected → consumer received, on RabbitMQ and over a webhook.

A simulated cloud (real vigil-server, real UDP heartbeats, SQLite store) loses one host
after another; every event of every recovery goes through the transactional outbox to
a real RabbitMQ (received by an oslo.messaging notification listener) and to a webhook
(a real HTTP receiver verifying signatures). For each event the latency is the time
from the event's creation — the moment vigil decided, in the transaction that records
it — to its arrival at the consumer; both ends read this machine's clock.

    .venv/bin/python bench/notify_latency.py [--failures 20] [--out FILE]

The headline is ``vigil.host.failure.confirmed`` (failure detected → consumer
notified); all events of the recoveries are reported too. Target: p99 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vigil.cli.demo import DemoOptions, Harness  # noqa: E402
from vigil.drivers.webhook import SIGNATURE_HEADER, verify_signature  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import oslo_messaging  # type: ignore[import-untyped]
    from oslo_config import cfg

RABBIT = os.environ.get("VIGIL_BENCH_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
SECRET = secrets.token_hex(16)


class Arrivals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, float] = {}

    def add(self, event_id: str) -> None:
        now = time.time()
        with self.lock:
            self.at.setdefault(event_id, now)


def webhook_receiver(arrivals: Arrivals) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if verify_signature(SECRET, self.headers.get(SIGNATURE_HEADER), body):
                arrivals.add(json.loads(body)["id"])
                self.send_response(204)
            else:
                self.send_response(401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host!s}:{port}/vigil"


class BusListener:
    def __init__(self, arrivals: Arrivals, topic: str, exchange: str) -> None:
        conf = cfg.ConfigOpts()
        conf(args=[], project="vigil-bench", default_config_files=[], default_config_dirs=[])
        self.transport = oslo_messaging.get_notification_transport(conf, url=RABBIT)

        def record(
            self: Any,
            ctxt: Any,
            publisher: Any,
            event_type: Any,
            payload: Any,
            metadata: dict[str, Any],
        ) -> None:
            arrivals.add(metadata["message_id"])

        endpoint = type(
            "Endpoint",
            (),
            {p: record for p in ("audit", "debug", "info", "warn", "error", "critical", "sample")},
        )()
        self.listener = oslo_messaging.get_notification_listener(
            self.transport,
            [oslo_messaging.Target(topic=topic, exchange=exchange)],
            [endpoint],
            executor="threading",
        )
        self.listener.start(override_pool_size=1)

    def close(self) -> None:
        self.listener.stop()
        self.listener.wait()
        self.transport.cleanup()


def summary(values: list[float]) -> dict[str, float | int]:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {"n": 0}

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))], 2)

    return {
        "n": len(ms),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench/results/notify_latency.json"))
    args = parser.parse_args()

    topic, exchange = f"vigil_bench_{os.getpid()}", f"vigil_bench_{os.getpid()}"
    bus, hook = Arrivals(), Arrivals()
    receiver, url = webhook_receiver(hook)
    listener = BusListener(bus, topic, exchange)
    overrides = (
        "notifier.drivers=messaging",
        f"notifier.transport_url={RABBIT}",
        f"notifier.topic={topic}",
        f"notifier.exchange={exchange}",
    )
    hosts = 6
    try:
        with Harness(DemoOptions(hosts=hosts, instances=12, overrides=overrides)) as h:
            h.client.post(
                "/v1/subscriptions", json={"name": "bench", "url": url, "secret": SECRET}
            ).raise_for_status()
            for n in range(args.failures):
                victim = f"compute-{n % hosts + 1}"
                t0 = h.inject("power-loss", victim)
                done = h.watch(victim, t0, timeout=30)
                if done is None or done["status"] != "succeeded":
                    raise RuntimeError(f"recovery of {victim} did not succeed: {done}")
                h.cloud.power_restore(victim)
                h.client.post(f"/v1/hosts/{victim}/restore").raise_for_status()
                wait(
                    lambda v=victim: h.client.get(f"/v1/hosts/{v}").json()["state"] == "up",
                    10,
                    f"{victim} up again",
                )
                print(f"failure {n + 1}/{args.failures}: {victim} recovered", flush=True)
            events = h.client.get("/v1/events", params={"limit": 1000}).json()
            while len(events) % 1000 == 0 and events:
                more = h.client.get(
                    "/v1/events", params={"limit": 1000, "after": events[-1]["seq"]}
                ).json()
                if not more:
                    break
                events += more
            wait(
                lambda: all(e["id"] in bus.at and e["id"] in hook.at for e in events),
                60,
                "every event at both consumers",
            )
    finally:
        listener.close()
        receiver.shutdown()

    def latencies(arrivals: Arrivals, only: str | None) -> list[float]:
        return [
            arrivals.at[e["id"]] - e["timestamp"]
            for e in events
            if only is None or e["event_type"] == only
        ]

    confirmed = "vigil.host.failure.confirmed"
    result = {
        "benchmark": "notify_latency",
        "command": f"python bench/notify_latency.py --failures {args.failures}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "failures": args.failures,
        "events": len(events),
        "rabbitmq": {
            "failure_confirmed": summary(latencies(bus, confirmed)),
            "all_events": summary(latencies(bus, None)),
        },
        "webhook": {
            "failure_confirmed": summary(latencies(hook, confirmed)),
            "all_events": summary(latencies(hook, None)),
        },
        "target_p99_ms": 100,
    }
    result["target_met"] = all(
        result[s]["failure_confirmed"]["p99_ms"] <= 100 for s in ("rabbitmq", "webhook")
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
