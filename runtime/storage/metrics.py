"""Prometheus metrics of the storage initializer (registered on the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STORAGE_BYTES = Counter(
    "zeroserve_storage_bytes",
    "Bytes of model artifacts delivered to replicas, by URI scheme and node-cache outcome",
    ["scheme", "cache"],
)
DOWNLOAD_SECONDS = Histogram(
    "zeroserve_storage_download_seconds",
    "Time to fetch a model's artifacts into the node cache (misses only)",
    ["scheme"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)


def record(scheme: str, cache_hit: bool, nbytes: int, download_s: float | None) -> None:
    STORAGE_BYTES.labels(scheme=scheme, cache="hit" if cache_hit else "miss").inc(nbytes)
    if download_s is not None:
        DOWNLOAD_SECONDS.labels(scheme=scheme).observe(download_s)
