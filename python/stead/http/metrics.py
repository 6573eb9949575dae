"""Prometheus metrics of one app, in its own ``CollectorRegistry``.

Request counts and latency are recorded per route, binding and method; the
runtime's gauges are read at scrape time, and fsync durations measured by the
engine since the last scrape are fed into a histogram then.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from stead.runtime import Runtime

__all__ = ["CONTENT_TYPE", "HttpMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# runtime.stats() key -> (metric name, help, is a counter)
_STATS = {
    "resident_objects": ("stead_resident_objects", "Object instances in memory", False),
    "mailbox_depth": ("stead_mailbox_depth", "Events queued for objects", False),
    "objects": ("stead_objects", "Objects with storage", False),
    "keys": ("stead_keys", "Stored keys", False),
    "pending_alarms": ("stead_pending_alarms", "Alarms set and not yet run", False),
    "commits": ("stead_commits", "Turns whose writes were committed", True),
    "syncs": ("stead_syncs", "Group commits made durable (fsync or write)", True),
}


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._runtime.stats()
        except RuntimeError:  # not started yet, or already closed
            return
        for key, (name, documentation, is_counter) in _STATS.items():
            if key not in stats:
                continue
            family: Metric
            if is_counter:
                family = CounterMetricFamily(name, documentation, value=stats[key])
            else:
                family = GaugeMetricFamily(name, documentation, value=stats[key])
            yield family


class HttpMetrics:
    """The metrics of one app; ``observe`` is called once per object request."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._runtime = runtime
        self._requests = Counter(
            "stead_http_requests",
            "HTTP requests to objects",
            ["route", "binding", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "stead_http_request_duration_seconds",
            "Latency of HTTP requests to objects",
            ["route", "binding", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._fsync = Histogram(
            "stead_fsync_duration_seconds",
            "Duration of the engine's group-commit syncs",
            buckets=_FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_RuntimeCollector(runtime))
        # Labelled children, cached: .labels() takes a lock and builds a tuple each time.
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, binding: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        key = (route, binding, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._requests.labels(route, binding, method, str(status)),
                self._latency.labels(route, binding, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition, after draining the engine's fsync timings."""
        try:
            latencies = self._runtime.take_sync_latencies()
        except RuntimeError:
            latencies = []
        for nanoseconds in latencies:
            self._fsync.observe(nanoseconds / 1e9)
        return bytes(generate_latest(self.registry))
