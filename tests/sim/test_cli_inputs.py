"""`zeroserve sim run|sweep` on bad input: one line per problem naming the flag, the value and the rule,
exit code 2, no traceback; and the outputs a strict JSON parser must accept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "sim" / "specs" / "llm-kpa.yaml")
SHORT = ["--window", "0:120"]  # 2 minutes of the code trace: fast


def _strict(text: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The stderr lines of a run that must exit 2, each checked for the one-line shape."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines and all(line.startswith("zeroserve sim: ") for line in lines), captured.err
    assert "Traceback" not in captured.err
    return [line.removeprefix("zeroserve sim: ") for line in lines]


BAD_FLAGS = [
    (["--time-scale", "-1"], "--time-scale = -1, must be > 0"),
    (["--time-scale", "0"], "--time-scale = 0, must be > 0"),
    (["--workload", "poisson", "--rate", "-1"], "--rate = -1, must be > 0"),
    (["--workload", "poisson", "--duration-s", "-5"], "--duration-s = -5, must be > 0"),
    (["--duration-s", "inf"], "--duration-s = inf, must be a finite number > 0"),
    (["--rate", "nan"], "--rate = nan, must be a finite number > 0"),
    (["--models", "0"], "--models = 0, must be >= 1"),
    (["--zipf", "-1"], "--zipf = -1, must be >= 0"),
    (["--on-s", "0"], "--on-s = 0, must be > 0"),
    (["--off-s", "-1"], "--off-s = -1, must be >= 0"),
    (["--seed", "-1"], "--seed = -1, must be >= 0"),
    (["--load-s", "-2"], "--load-s = -2, must be >= 0"),
    (["--schedule-s", "-1"], "--schedule-s = -1, must be >= 0"),
    (["--artifact-gb", "-1"], "--artifact-gb = -1, must be >= 0"),
    (["--fetch-gb-per-s", "0"], "--fetch-gb-per-s = 0, must be > 0"),
    (["--cache-hit", "2"], "--cache-hit = 2, must be in [0, 1]"),
    (["--jitter", "1.5"], "--jitter = 1.5, must be in [0, 1]"),
    (["--service-s", "-0.1"], "--service-s = -0.1, must be >= 0"),
    (["--prefill-tps", "-1"], "--prefill-tps = -1, must be >= 0"),
    (["--decode-tps", "-1"], "--decode-tps = -1, must be >= 0"),
    (["--window", "10:5"], "--window = 10:5, must be START:END in seconds with 0 <= START < END"),
    (["--window", "300"], "--window = 300, must be START:END"),
    (["--window=-5:10"], "--window = -5:10, must be START:END"),
    (["--window", "9000:"], "--window = 9000:, holds no request of trace"),
    (["--workload", "poisson", "--rate", "1e-9", "--duration-s", "10"],
     "--workload poisson --rate 1e-09 --duration-s 10 draws no request: nothing to simulate"),
    (["--rate", "1000", "--duration-s", "1e9"],
     "--rate 1000 x --duration-s 1e+09 = 1e+12 requests, must be <="),
    (["--png", "/no-such-dir/run.png"], "--png = /no-such-dir/run.png, no such directory"),
    (["--rate", "abc"], "argument --rate: invalid float value: 'abc'"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_run_rejects_a_bad_flag(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _fails(["run", "-f", SPEC, *flags], capsys)
    assert len(lines) == 1 and lines[0].startswith(message), lines


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS[:8], ids=[" ".join(f) for f, _ in BAD_FLAGS[:8]])
def test_sweep_rejects_a_bad_flag(flags: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out_csv = tmp_path / "s.csv"
    lines = _fails(["sweep", "-f", SPEC, "--param", "target=5,7", "--csv", str(out_csv), *flags], capsys)
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not out_csv.exists()


def test_every_bad_flag_is_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _fails(["run", "-f", str(ROOT / "no-such.yaml"), "--time-scale", "-1", "--models", "0",
                    "--cache-hit", "2", "--window", "10:5"], capsys)
    assert [line.split(" = ")[0] for line in lines] == ["--time-scale", "--models", "--cache-hit", "--window",
                                                        "-f"]


def test_sweep_reports_bad_flags_and_malformed_params_together(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lines = _fails(["sweep", "-f", SPEC, "--rate", "0", "--param", "target", "--param", "=1",
                    "--csv", str(tmp_path / "s.csv")], capsys)
    assert lines == ["--rate = 0, must be > 0", "--param 'target': expected NAME=VALUE[,VALUE...]",
                     "--param '=1': expected NAME=VALUE[,VALUE...]"]


def test_negative_time_scale_exits_at_once_from_the_real_entry_point() -> None:
    # It used to loop for ever (arrivals before the clock's start).
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "run", "--trace", "code", "-f", SPEC,
                           "--time-scale", "-1"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr == "zeroserve sim: --time-scale = -1, must be > 0\n"
    assert proc.stdout == ""


def test_a_trace_with_a_non_finite_time_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s\n0\nnan\n3\n")
    lines = _fails(["run", "-f", SPEC, "--trace", str(trace)], capsys)
    assert lines == [f"trace {trace}:3: arrival time nan is not finite"]


BAD_PARAMS = [
    (["sim.load_s=abc,-1,2"], ["--param sim.load_s = abc, must be >= 0",
                               "--param sim.load_s = -1, must be >= 0"]),
    (["sim.cache_hit_ratio=0.5,1.5"], ["--param sim.cache_hit_ratio = 1.5, must be in [0, 1]"]),
    (["sim.fetch_bytes_per_s=0"], ["--param sim.fetch_bytes_per_s = 0, must be > 0"]),
    (["sim.warp=1,2"], ["--param sim.warp: unknown, one of"]),
    (["target=1", "target=2"], ["--param target: given twice"]),
    (["novalues"], ["--param 'novalues': expected NAME=VALUE"]),
    (["scaleToZeroGracePeriod=30s,abc"],
     ["--param scaleToZeroGracePeriod=abc: spec.scaling.scaleToZeroGracePeriod = abc, must be a duration"]),
    (["minReplicas=3", "maxReplicas=5,2"],
     ["--param minReplicas=3 maxReplicas=2: spec.scaling.minReplicas = 3, must be <= maxReplicas"]),
]


@pytest.mark.parametrize(("params", "messages"), BAD_PARAMS, ids=[" ".join(p) for p, _ in BAD_PARAMS])
def test_sweep_checks_every_param_value_before_running(params: list[str], messages: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out_csv = tmp_path / "s.csv"
    argv = ["sweep", "-f", SPEC, *SHORT, "--csv", str(out_csv)]
    for p in params:
        argv += ["--param", p]
    lines = _fails(argv, capsys)
    assert len(lines) == len(messages), lines
    for line, message in zip(lines, messages, strict=True):
        assert line.startswith(message), lines
    assert not out_csv.exists()  # nothing ran, not even the valid combinations


def test_no_served_request_gives_null_latency_and_a_dash(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # A 100 s load behind a 1 s queue timeout: every request is lost, no latency is defined.
    spec = tmp_path / "slow.yaml"
    spec.write_text("kind: ModelService\nmetadata: {name: slow}\nspec:\n"
                    "  runtime: {model: tiny-llm, loadTime: 100s}\n  queue: {maxQueued: 10, timeout: 1s}\n")
    assert main(["run", "-f", str(spec), "--window", "0:20", "--json"]) == 0
    report = _strict(capsys.readouterr().out)
    assert report["requests"] > 0 and report["served"] == 0
    assert report["lost_timeout"] == report["requests"]
    assert report["latency_p50_s"] is None and report["latency_p99_s"] is None
    assert report["latency_max_s"] is None
    assert main(["run", "-f", str(spec), "--window", "0:20"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in table if line.startswith("latency")] == ["-", "-", "-"]


def test_a_small_valid_run_and_sweep_print_strict_json(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-f", SPEC, *SHORT, "--time-scale", "0.5", "--json"]) == 0
    report = _strict(capsys.readouterr().out)
    assert report["models"] == 1 and report["requests"] > 0
    assert report["served"] == report["requests"]
    assert report["latency_p99_s"] >= report["latency_p50_s"] > 0
    out_csv = str(tmp_path / "s.csv")
    assert main(["sweep", "-f", SPEC, *SHORT, "--param", "sim.load_s=0,5", "--csv", out_csv]) == 0
    rows = [_strict(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["sim.load_s"] for row in rows] == ["0", "5"]
    assert rows[1]["latency_max_s"] > rows[0]["latency_max_s"]


MULTI = """\
kind: ModelService
metadata: {name: fast}
spec: {runtime: {model: tiny-llm, loadTime: 1s, tokenLatency: 1ms}}
---
kind: ModelService
metadata: {name: slow}
spec:
  runtime: {model: tiny-llm, loadTime: 40s, tokenLatency: 1ms}
  scaling: {scaleToZeroGracePeriod: 300s}
"""


def test_every_model_of_a_spec_file_is_simulated_with_its_own_costs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(MULTI)
    assert main(["run", "-f", str(spec), "--window", "0:300", "--zipf", "0", "--json"]) == 0
    report = _strict(capsys.readouterr().out)
    assert report["models"] == 2
    per_model = report["per_model"]
    assert list(per_model) == ["fast", "slow"]
    assert all(row["scale_from_zero"] >= 1 for row in per_model.values())
    assert sum(row["gpu_seconds"] for row in per_model.values()) == pytest.approx(report["gpu_seconds"],
                                                                                   abs=0.01)
    # Only the slow model's 40 s load can make a request wait that long; with the first spec's costs
    # for both (the old behaviour) no request waited more than a few seconds.
    assert report["latency_max_s"] > 40.0
    # Its own scaling too: the slow one keeps its replica 300 s after a burst, the fast one 30 s.
    assert per_model["slow"]["gpu_seconds"] > per_model["fast"]["gpu_seconds"]
    # --load-s applies to every model: no request waits 40 s any more.
    assert main(["run", "-f", str(spec), "--window", "0:300", "--zipf", "0", "--load-s", "1", "--json"]) == 0
    assert _strict(capsys.readouterr().out)["latency_max_s"] < 40.0
    lines = _fails(["run", "-f", str(spec), "--window", "0:300", "--models", "3"], capsys)
    assert lines == [f"--models = 3, must be 2 (or left out) with {spec}, which defines 2 models: fast, slow"]


def test_a_synthetic_workload_over_several_models_keeps_its_kind(capsys: pytest.CaptureFixture[str]) -> None:
    # --workload poisson --models N splits one Poisson stream (it used to become N bursty sources).
    argv = ["run", "-f", SPEC, "--workload", "poisson", "--rate", "0.5", "--duration-s", "600", "--json"]
    assert main(argv) == 0
    one = _strict(capsys.readouterr().out)
    assert main([*argv, "--models", "3"]) == 0
    three = _strict(capsys.readouterr().out)
    assert three["models"] == 3
    assert three["requests"] == one["requests"]  # the same arrivals, spread over three models


def test_batch_falls_back_to_the_scalar_controller_for_mixed_windows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The batch controller needs one stable window for all models; it used to raise out of the CLI.
    spec = tmp_path / "mixed.yaml"
    spec.write_text(MULTI.replace("{scaleToZeroGracePeriod: 300s}", "{stableWindow: 20s}"))
    argv = ["run", "-f", str(spec), "--window", "0:300", "--json"]
    assert main([*argv, "--batch"]) == 0
    batch = _strict(capsys.readouterr().out)
    assert main(argv) == 0
    scalar = _strict(capsys.readouterr().out)
    assert batch["models"] == 2
    batch.pop("wall_s")
    scalar.pop("wall_s")
    assert batch == scalar
