"""`zeroserve sim run|sweep` as a user runs it: a real subprocess for one, in-process for the rest."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "sim" / "specs" / "llm-kpa.yaml"


def test_module_entry_point_prints_json(tmp_path: Path) -> None:
    png = tmp_path / "run.png"
    proc = subprocess.run(
        [sys.executable, "-m", "sim.cli", "run", "--trace", "code", "--window", "0:300", "-f", str(SPEC),
         "--load-s", "14", "--prefill-tps", "10000", "--json", "--png", str(png)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["requests"] > 500
    assert report["served"] + report["lost_timeout"] + report["lost_rejected"] == report["requests"]
    assert report["cold_starts"] >= report["scale_from_zero"] >= 1
    assert report["latency_p99_s"] >= report["latency_p50_s"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_run_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--workload", "poisson", "--rate", "0.2", "--duration-s", "600", "-f", str(SPEC)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "GPU-seconds" in out and "latency p99" in out
    assert json.loads(out.strip().splitlines()[-1])["models"] == 1


def test_sweep_writes_csv_and_pareto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_csv, png = tmp_path / "s.csv", tmp_path / "p.png"
    code = main(["sweep", "--trace", "code", "--window", "0:600", "-f", str(SPEC),
                 "--param", "scaleToZeroGracePeriod=0s,300s", "--param", "sim.load_s=2,20",
                 "--csv", str(out_csv), "--png", str(png)])
    assert code == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["scaleToZeroGracePeriod"], r["sim.load_s"]) for r in rows] == [
        ("0s", "2"), ("0s", "20"), ("300s", "2"), ("300s", "20")]
    by = {(r["scaleToZeroGracePeriod"], r["sim.load_s"]): r for r in rows}
    # With fast cold starts, a longer grace keeps replicas longer and starts from zero less often.
    # (With slow ones it can save GPU-seconds: fewer cold bursts, fewer panic scale-ups.)
    assert float(by[("300s", "2")]["gpu_seconds"]) > float(by[("0s", "2")]["gpu_seconds"])
    assert int(by[("300s", "2")]["scale_from_zero"]) < int(by[("0s", "2")]["scale_from_zero"])
    # Slower cold starts make more requests wait.
    assert float(by[("0s", "20")]["latency_p99_s"]) > float(by[("0s", "2")]["latency_p99_s"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ModelService\nmetadata: {name: x}\n"
                   "spec: {runtime: {model: iris}, scaling: {target: -1}}\n")
    assert main(["run", "-f", str(bad)]) == 2
    assert "spec.scaling.target" in capsys.readouterr().err
    assert main(["run", "-f", str(SPEC), "--trace", "nope.csv"]) == 2
    assert main(["sweep", "-f", str(SPEC), "--param", "novalues"]) == 2
    assert main(["sweep", "-f", str(SPEC), "--param", "sim.warp=1"]) == 2
    assert main(["run"]) == 2
