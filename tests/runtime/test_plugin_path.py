"""A plugin model in the working directory loads through the `zeroserve` console script, whose
sys.path starts at its bin/ folder, not at the working directory as `python -m` does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout, so the entry imports zeroserve
PLUGIN = '''
from runtime.server.model import Model


class MyModel(Model):
    pass
'''


def test_serve_finds_a_plugin_package_in_the_working_directory(tmp_path: Path) -> None:
    work, bin_dir = tmp_path / "work", tmp_path / "bin"
    (work / "mypkg").mkdir(parents=True)
    (work / "mypkg" / "__init__.py").write_text("")
    (work / "mypkg" / "models.py").write_text(PLUGIN)
    bin_dir.mkdir()
    entry = bin_dir / "zeroserve"  # what pip writes for a console script
    entry.write_text("import sys\nfrom zeroserve.cli import main\nsys.exit(main())\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(entry), "serve", "--model", "mypkg.models:MyModel",
                                 "--port", "0"], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while "model mymodel ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
