"""The activator's Prometheus metrics (names as docs/design.md lists them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   120, 300, 600)


class ActivatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("zeroserve_requests", "Requests through the activator",
                                ["model", "code"], registry=registry)
        self.duration = Histogram("zeroserve_request_duration_seconds",
                                  "Time from arrival to the end of the response", ["model"],
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("zeroserve_queue_depth", "Requests waiting for a replica",
                                 ["model"], registry=registry)
        self.queue_wait = Histogram("zeroserve_queue_wait_seconds",
                                    "Time a request waited for a replica slot", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.cold_starts = Counter("zeroserve_cold_starts", "Scale-from-zero events seen by the "
                                   "activator", ["model"], registry=registry)
        self.retries = Counter("zeroserve_upstream_retries", "Requests retried on another replica",
                               ["model"], registry=registry)
