"""`zeroserve ...`: dispatch to each part's own command, imported lazily.

Lazy imports keep `zeroserve serve` (a replica's start-up) and `zeroserve storage-init` (an init
container) from paying for the autoscaler, the activator or Kubernetes clients.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, str, str]] = {
    "up": ("zeroserve.up", "main", "run activator + autoscaler + local backend in one process"),
    "status": ("zeroserve.status", "main", "show models, replicas and queues of a running `up`"),
    "validate": ("zeroserve.spec", "main", "check ModelService files"),
    "serve": ("runtime.server.cli", "main", "run the built-in model server (one replica)"),
    "storage-init": ("runtime.storage.cli", "storage_init_main", "fetch SRC_URI into DEST_DIR"),
    "cache": ("runtime.storage.cli", "cache_main", "node cache: ls, rm, prune, prefetch"),
    "sim": ("sim.cli", "main", "simulate scaling policy on a trace, or sweep its parameters"),
    "manifests": ("zeroserve.manifests", "main", "render the Kubernetes install"),
    "autoscaler": ("autoscaler.cluster", "main", "run the autoscaler in a cluster"),
    "activator": ("activator.cluster", "main", "run the activator in a cluster"),
}


def _usage() -> str:
    lines = ["usage: zeroserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`zeroserve COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import version

        print(version("zeroserve"))
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"zeroserve: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = entry
    func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
    try:
        return func(args[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
