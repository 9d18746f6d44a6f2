"""Run a server module with a SIGTERM sent to itself the moment it logs "listening on" (test helper).

    python sigterm_on_listening.py LOGGER MODULE [ARGS...]

A backend (or a test) that sees the listening line may stop the server at once; this makes that
happen at the worst instant, between the log call and whatever the server does next, every time.
The server must then drain and exit 0, not die of SIGTERM's default action.
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import sys


class _TermOnListening(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if "listening on" in record.getMessage():
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    logger, module, *args = sys.argv[1:]
    logging.getLogger(logger).addHandler(_TermOnListening())
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
