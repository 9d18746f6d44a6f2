"""A newcomer's path: the README's install command in a new virtualenv, then the quickstart."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.harness import Up

README = (ROOT / "README.md").read_text()


def _readme_install_command() -> str:
    m = re.search(r"```bash\n(pip install [^\n]+?) && zeroserve up -f examples/quickstart.yaml\n", README)
    assert m, "README must hold the quickstart command: pip install ... && zeroserve up -f ..."
    return m.group(1)


@pytest.mark.slow
@pytest.mark.timeout(300)  # pip's time is the network's and the machine's; 120 s was too close
def test_readme_quickstart_in_a_new_virtualenv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # System site packages stand in for the wheel cache: the install itself is the README's. They
    # hold pip too, so the venv skips ensurepip (20 s of a loaded machine's time, not what we test).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    install = _readme_install_command().replace("pip install", f"{venv}/bin/python -m pip install -q")
    out = subprocess.run(install, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    exe = venv / "bin" / "zeroserve"
    assert exe.exists()
    up = Up(ROOT / "examples" / "quickstart.yaml", argv0=[str(exe)], log=tmp_path / "up.log")
    try:
        up.wait_up(60)
        req = urllib.request.Request(up.url + "/v1/models/iris:predict",
                                     data=b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}', method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            assert r.headers["X-Zeroserve-Cold-Start"] == "true"
            assert b'"predictions"' in r.read()
    finally:
        assert up.stop() == 0, up.output()
