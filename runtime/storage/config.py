"""Tuning of one fetch: parallelism, part sizes, retries and timeouts (validated by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class TransferConfig:
    concurrency: int = 16  # requests in flight, across all files
    part_size_bytes: int = 32 * MiB
    min_ranged_bytes: int = 64 * MiB  # smaller files are one GET: a split would cost more than it saves
    attempts: int = 5  # consecutive failures without progress before a part (or a listing) gives up
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    connect_timeout_s: float = 15.0
    # Per request, between two reads: a stalled connection is retried, a slow but moving one is not.
    read_timeout_s: float = 60.0
