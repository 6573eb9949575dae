"""Prometheus metrics of one app, in its own ``CollectorRegistry``.

Requests are counted per route, binding, method and status, with a latency
histogram per route, binding and method. Recording one request is a few dict
and list operations on the event loop thread (no locks); the numbers become
Prometheus metric families only when ``/metrics`` is scraped. The runtime's
gauges are read at scrape time too, and the fsync durations the engine
measured since the last scrape are fed into a histogram then.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from stead.runtime import Runtime

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "HttpMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the request latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# runtime.stats() key -> (metric name, help, is a counter)
_STATS = {
    "resident_objects": ("stead_resident_objects", "Object instances in memory", False),
    "mailbox_depth": ("stead_mailbox_depth", "Events queued for objects", False),
    "running_events": (
        "stead_running_events",
        "Events of handlers that can suspend, running in their own tasks",
        False,
    ),
    "objects": ("stead_objects", "Objects with storage", False),
    "keys": (
        "stead_keys",
        "Stored keys, stead's internal ones included (an object's name, an Agent's state)",
        False,
    ),
    "pending_alarms": ("stead_pending_alarms", "Alarms set and not yet run", False),
    "commits": ("stead_commits", "Turns whose writes were committed", True),
    "syncs": ("stead_syncs", "Group commits made durable (fsync or write)", True),
    "held_groups": (
        "stead_held_groups",
        "Group commits held back while the event loop had durable callers queued (CPU-bound)",
        True,
    ),
}


class _Series:
    """Requests of one (route, binding, method)."""

    __slots__ = ("buckets", "statuses", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.statuses: dict[int, int] = {}
        self.total = 0.0


class _RequestCollector(Collector):
    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], _Series] = {}

    def collect(self) -> Iterator[Metric]:
        labels = ["route", "binding", "method"]
        requests = CounterMetricFamily(
            "stead_http_requests", "HTTP requests to objects", labels=[*labels, "status"]
        )
        latency = HistogramMetricFamily(
            "stead_http_request_duration_seconds",
            "Latency of HTTP requests to objects",
            labels=labels,
        )
        for key, series in sorted(self.series.items()):
            for status, count in sorted(series.statuses.items()):
                requests.add_metric([*key, str(status)], count)
            latency.add_metric(list(key), _cumulative(series.buckets), series.total)
        yield requests
        yield latency


def _cumulative(buckets: list[int]) -> list[tuple[str, float]]:
    bounds = [*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"]
    running, result = 0, []
    for bound, count in zip(bounds, buckets, strict=True):
        running += count
        result.append((bound, float(running)))
    return result


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._runtime.stats()
        except RuntimeError:  # not started yet, or already closed
            return
        for key, (name, documentation, is_counter) in _STATS.items():
            if key in stats:
                family = CounterMetricFamily if is_counter else GaugeMetricFamily
                yield family(name, documentation, value=stats[key])


class HttpMetrics:
    """The metrics of one app; ``observe`` is called once per object request."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._runtime = runtime
        self._requests = _RequestCollector()
        self._fsync = Histogram(
            "stead_fsync_duration_seconds",
            "Duration of the engine's group-commit syncs",
            buckets=_FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self._requests)
        self.registry.register(_RuntimeCollector(runtime))

    def observe(self, route: str, binding: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        key = (route, binding, method)
        series = self._requests.series.get(key)
        if series is None:
            series = self._requests.series[key] = _Series()
        series.statuses[status] = series.statuses.get(status, 0) + 1
        series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def render(self) -> bytes:
        """The Prometheus text exposition, after draining the engine's fsync timings."""
        try:
            latencies = self._runtime.take_sync_latencies()
        except RuntimeError:
            latencies = []
        for nanoseconds in latencies:
            self._fsync.observe(nanoseconds / 1e9)
        return bytes(generate_latest(self.registry))
