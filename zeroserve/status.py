"""`zeroserve status`: the models of a running `zeroserve up`, as a table."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

COLUMNS = ("MODEL", "DESIRED", "READY", "INFLIGHT", "QUEUED", "PANIC", "GPUS", "LAST COLD START",
           "CRASHES")


def render(status: dict[str, Any]) -> str:
    rows = [COLUMNS]
    for name, m in sorted(status.get("models", {}).items()):
        gpus = sorted({g for r in m.get("replicas", []) for g in r.get("gpus", [])})
        cold = m.get("last_cold_start") or {}
        cold_s = f"{sum(cold.values()):.2f}s" if cold else "-"
        rows.append((name, str(m.get("desired", "-")), str(m.get("ready", 0)),
                     str(m.get("inflight", 0)), str(m.get("queued", 0)),
                     "yes" if m.get("panic") else "no", ",".join(map(str, gpus)) or "-", cold_s,
                     str(m.get("crashes", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    # Why a model cannot start, under the table: the reason and the replica's last stderr lines.
    for name, m in sorted(status.get("models", {}).items()):
        failure = m.get("last_failure")
        if failure:
            lines += ["", f"{name}: {failure.get('reason', 'replica failed')}"]
            tail = (failure.get("stderr_tail") or "").rstrip().splitlines()[-5:]
            lines += [f"  | {line}" for line in tail]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zeroserve status")
    p.add_argument("--admin", default="http://127.0.0.1:9090",
                   help="admin address of `up`: URL or host:port (default http://127.0.0.1:9090)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    args = p.parse_args(argv)
    admin = args.admin if "://" in args.admin else "http://" + args.admin  # host:port is enough
    url = admin.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = json.load(resp)
    except (urllib.error.URLError, OSError) as e:
        print(f"zeroserve status: cannot reach {url}: {e}. Is `zeroserve up` running?",
              file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
