"""policy and aggregation stay standard-library only (the simulator and activator import them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys
import autoscaler.policy, autoscaler.aggregation
heavy = ("numpy", "aiohttp", "prometheus_client", "zeroserve", "activator", "runtime", "kubernetes_asyncio")
print(",".join(sorted(m for m in heavy if m in sys.modules)))
"""


def test_policy_and_aggregation_import_only_the_standard_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
