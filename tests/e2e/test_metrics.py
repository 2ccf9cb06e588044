"""``GET /metrics``: what an operator's Prometheus scrapes, from a running server whose
simulated agents beat over real UDP, through a host failure."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from vigil.cli.demo import DemoOptions, Harness


def scrape(api: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{api.base_url}/metrics")  # no token: counts only
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def test_metrics_count_heartbeats_hosts_cycles_and_the_outbox() -> None:
    with Harness(DemoOptions(hosts=3, instances=3)) as h:
        # As the engine's latest cycle read them: a tick after the API shows them up.
        wait_until(
            lambda: scrape(h.client)["vigil_hosts", (("state", "up"),)] == 3,
            "three hosts up",
            timeout=2,
        )
        first = scrape(h.client)
        assert first["vigil_heartbeats_received_total", ()] > 0
        # (a host's first beats may come before the engine's next cycle knows it)
        assert first["vigil_heartbeats_refused_total", ()] <= 3
        wait_until(
            lambda: (
                scrape(h.client)["vigil_heartbeats_received_total", ()]
                >= first["vigil_heartbeats_received_total", ()] + 3 * 4
            ),
            "a second of heartbeats from three hosts",
            timeout=5,
        )
        engine = (("loop", "vigil-engine"), ("reaction", "engine"))
        assert first["vigil_cycles_total", engine] > 0
        assert first["vigil_cycle_seconds_total", engine] > 0
        assert first["vigil_outbox_lag_seconds", (("sink", "memory"),)] >= 0

        t0 = h.inject("power-loss", "compute-1")
        recovery = h.watch("compute-1", t0, timeout=20)
        assert recovery is not None and recovery["status"] == "succeeded"
        wait_until(
            lambda: scrape(h.client)["vigil_hosts", (("state", "recovered"),)] == 1,
            "compute-1 recovered",
            timeout=2,
        )
        assert scrape(h.client)["vigil_hosts", (("state", "up"),)] == 2
        # The events of the recovery were delivered: the sink is up to date again.
        wait_until(
            lambda: scrape(h.client)["vigil_outbox_lag_seconds", (("sink", "memory"),)] == 0,
            "the memory sink up to date",
            timeout=5,
        )
