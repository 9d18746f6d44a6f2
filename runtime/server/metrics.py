"""The model server's Prometheus metrics, on a registry of its own (one per app, so tests can host many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from runtime.gpu import GpuCollector, GpuInventory
from runtime.server.host import ModelHost

# Inference on a CPU toy is sub-millisecond and an LLM stream takes seconds: cover both.
_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, host: ModelHost, gpus: GpuInventory) -> None:
        self.host = host
        self.registry = CollectorRegistry()
        self.inference_s = Histogram(
            "zeroserve_inference_duration_seconds",
            "Time to answer one inference request (whole stream)",
            ["model", "protocol"],
            buckets=_BUCKETS_S,
            registry=self.registry,
        )
        self.requests = Counter(
            "zeroserve_inference_requests",
            "Inference requests answered, by status code",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.load_s = Gauge(
            "zeroserve_model_load_seconds",
            "Seconds load() took",
            ["model"],
            registry=self.registry,
        )
        self.startup_s = Gauge(
            "zeroserve_server_startup_seconds",
            "Seconds from process start to each phase",
            ["model", "phase"],
            registry=self.registry,
        )
        in_flight = Gauge(
            "zeroserve_inference_in_flight", "Requests being answered", ["model"], registry=self.registry
        )
        in_flight.labels(host.name).set_function(lambda: host.in_flight)
        ready = Gauge(
            "zeroserve_model_ready", "1 when the model answers inference", ["model"], registry=self.registry
        )
        ready.labels(host.name).set_function(lambda: 1.0 if host.ready else 0.0)
        self.registry.register(GpuCollector(gpus))

    def observe(self, protocol: str, duration_s: float, code: int) -> None:
        self.inference_s.labels(self.host.name, protocol).observe(duration_s)
        self.requests.labels(self.host.name, protocol, str(code)).inc()

    def record_startup(self) -> None:
        startup = self.host.times.as_json()
        if startup["load_s"] is not None:
            self.load_s.labels(self.host.name).set(startup["load_s"])
        for phase in ("imports", "listening", "ready"):
            value = startup[f"{phase}_s"]
            if value is not None:
                self.startup_s.labels(self.host.name, phase).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
