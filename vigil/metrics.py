"""vigil-server's Prometheus metrics (``GET /metrics``, text format, no token: counts
only, nothing about any instance, as other OpenStack services expose theirs).

Read when scraped from what the server's parts already count (``prometheus_client``'s
custom-collector API), so that nothing on a hot path — 40,000 heartbeats a second at
10,000 hosts — pays for a metric per event; in a registry of its own per server, since
tests and the demo run several servers in one process.

- ``vigil_heartbeats_received_total`` / ``vigil_heartbeats_refused_total`` /
  ``vigil_heartbeats_dropped_total``: heartbeats verified and recorded, refused (bad
  signature, unknown host, replayed), and dropped by the socket before the server read
  them; ``vigil_heartbeats_unverified_total``: heartbeats of other servers' segments,
  recorded by name (``vigil.engine.heartbeat``);
- ``vigil_hosts{state}``: hosts by state, as the engine's latest cycle read them;
- ``vigil_cycles_total{loop,reaction}`` / ``vigil_cycle_seconds_total{loop,reaction}``:
  the reconciler cycles run and the time spent in them (their ratio: a cycle's mean
  cost; the rate of the seconds: the share of a core the decisions take);
- ``vigil_outbox_lag_seconds{sink}``: how long ago the oldest event not yet delivered to
  the sink happened (0: it is up to date).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vigil.model import Host, HostState


class ServerMetrics(Collector):
    def __init__(
        self,
        *,
        heartbeats: Callable[[], tuple[int, int, int, int]],
        hosts: Callable[[], Mapping[str, Host]],
        cycles: Callable[[], Mapping[tuple[str, str], tuple[int, float]]],
        outbox_lags: Callable[[], Mapping[str, float]],
    ) -> None:
        self._heartbeats = heartbeats
        self._hosts = hosts
        self._cycles = cycles
        self._lags = outbox_lags
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        received, refused, dropped, unverified = self._heartbeats()
        yield CounterMetricFamily(
            "vigil_heartbeats_received", "Heartbeats verified and recorded.", value=received
        )
        yield CounterMetricFamily(
            "vigil_heartbeats_unverified",
            "Heartbeats of hosts of segments other servers hold, recorded by the host's "
            "name alone (not verified here; their owner verifies them).",
            value=unverified,
        )
        yield CounterMetricFamily(
            "vigil_heartbeats_refused",
            "Heartbeats refused: bad signature, unknown host, replayed.",
            value=refused,
        )
        yield CounterMetricFamily(
            "vigil_heartbeats_dropped",
            "Heartbeat datagrams this server's socket dropped, its queue full (the server "
            "not keeping up; no host's silence counts meanwhile).",
            value=dropped,
        )
        states = Counter(h.state for h in self._hosts().values())
        hosts = GaugeMetricFamily("vigil_hosts", "Hosts by state.", labels=["state"])
        for state in HostState:
            hosts.add_metric([state.value], states.get(state, 0))
        yield hosts
        runs = CounterMetricFamily(
            "vigil_cycles", "Reconciler cycles run.", labels=["loop", "reaction"]
        )
        spent = CounterMetricFamily(
            "vigil_cycle_seconds",
            "Seconds spent in reconciler cycles.",
            labels=["loop", "reaction"],
        )
        for (loop, reaction), (count, seconds) in sorted(self._cycles().items()):
            runs.add_metric([loop, reaction], count)
            spent.add_metric([loop, reaction], seconds)
        yield runs
        yield spent
        lag = GaugeMetricFamily(
            "vigil_outbox_lag_seconds",
            "Age of the oldest event not yet delivered to the sink (0: up to date).",
            labels=["sink"],
        )
        for sink, seconds in sorted(self._lags().items()):
            lag.add_metric([sink], seconds)
        yield lag
