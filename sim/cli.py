"""`zeroserve sim run|sweep`: replay a trace against a spec offline and report what it would cost.

    zeroserve sim run --trace code -f sim/specs/llm-kpa.yaml --load-s 14 --png run.png
    zeroserve sim sweep --trace code -f sim/specs/llm-kpa.yaml --param scaleToZeroGracePeriod=0s,30s,300s \\
        --param policy=kpa,histogram --csv sweep.csv --png pareto.png

Exit codes: 0 ok, 1 runtime failure, 2 bad input (spec, trace, flags): one stderr line per problem,
`zeroserve sim: --time-scale = -1, must be > 0`, every flag's range in sim/inputs.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from sim import workloads
from sim.inputs import InputError, check_flags, parse_window, window_holds_requests
from sim.report import per_model, per_model_table, plot_pareto, plot_run, table
from sim.scenario import CostsFor, ReplicaCosts, costs_from_spec, simulate
from sim.sweep import SweepError, parse_param, run_sweep, write_csv
from sim.traces import TraceError, load_trace
from sim.workloads import Workload
from zeroserve.spec import ModelService, SpecError, load_specs

log = logging.getLogger(__name__)

GB = 1e9


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (an unknown flag, `--rate abc`) on one line, as the range checks'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"zeroserve sim: {message} (see {self.prog} --help)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, type=Path, help="ModelService YAML")
    w = p.add_argument_group("workload")
    w.add_argument("--trace", default="code",
                   help="trace CSV path or shipped name (code, conv); ignored for synthetic workloads")
    w.add_argument("--workload", choices=("trace", "poisson", "bursty", "diurnal", "many"), default="trace")
    w.add_argument("--window", help="START:END seconds of the trace to replay (END may be left out)")
    w.add_argument("--time-scale", type=float, default=1.0, help="stretch (>1) or compress (<1) time")
    w.add_argument("--models", type=int,
                   help="split the traffic over N models (Zipf; default: one per model in the spec file)")
    w.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of model popularity")
    w.add_argument("--rate", type=float, default=1.0, help="synthetic: mean requests/s (all models)")
    w.add_argument("--duration-s", type=float, default=3600.0, help="synthetic: span")
    w.add_argument("--on-s", type=float, default=60.0, help="bursty/many: mean burst length")
    w.add_argument("--off-s", type=float, default=300.0, help="bursty/many: mean gap length")
    w.add_argument("--seed", type=int, default=0)
    c = p.add_argument_group("replica costs")
    c.add_argument("--load-s", type=float, help="model load to ready (default: the spec's runtime.loadTime)")
    c.add_argument("--schedule-s", type=float, default=0.0, help="scheduling + container start")
    c.add_argument("--artifact-gb", type=float, default=0.0, help="artifact size fetched on a cache miss")
    c.add_argument("--fetch-gb-per-s", type=float, default=1.0, help="fetch bandwidth on a cache miss")
    c.add_argument("--cache-hit", type=float, default=1.0, help="node-cache hit ratio, 0..1")
    c.add_argument("--jitter", type=float, default=0.0, help="+/- fraction spread of each cold start")
    c.add_argument("--service-s", type=float, default=0.0, help="fixed part of each request's service time")
    c.add_argument("--prefill-tps", type=float, default=0.0, help="prefill tokens/s (0: not modelled)")
    c.add_argument("--decode-tps", type=float,
                   help="decode tokens/s (default: 1 / the spec's runtime.tokenLatency)")
    p.add_argument("--batch", action="store_true", help="numpy batch controller (KPA, many models)")
    p.add_argument("-v", "--verbose", action="store_true")


def model_names(args: argparse.Namespace, services: list[ModelService]) -> tuple[str, ...]:
    """The workload's models: each model of a multi-model spec file under its own name (its own
    scaling, queue and replica costs), else --models copies of the one spec (m0, m1, ...)."""
    if len(services) > 1:
        names = tuple(s.name for s in services)
        if args.models is not None and args.models != len(names):
            raise InputError([f"--models = {args.models}, must be {len(names)} (or left out) with "
                              f"{args.filename}, which defines {len(names)} models: {', '.join(names)}"])
        return names
    count = args.models or 1
    return workloads.model_names(count) if count > 1 else ("model",)


def build_workload(args: argparse.Namespace, names: tuple[str, ...]) -> Workload:
    """The traffic, spread over `names` by Zipf popularity (their order is their rank)."""
    kind, n = args.workload, len(names)
    if kind == "trace":
        trace = load_trace(args.trace)
        if args.window is not None:
            window = parse_window(args.window)
            window_holds_requests(trace, window, args.window)
            trace = trace.window(*window)
        if args.time_scale != 1.0:
            trace = trace.time_scaled(args.time_scale)
        one = workloads.from_trace(trace)
    else:
        tokens = load_trace("conv")  # synthetic arrivals still get real token counts
        if kind == "many":
            one = workloads.many_models(n, args.rate, args.duration_s, args.zipf, on_s=args.on_s,
                                        off_s=args.off_s, seed=args.seed, tokens_from=tokens, names=names)
        elif kind == "poisson":
            one = workloads.poisson(args.rate, args.duration_s, seed=args.seed, tokens_from=tokens)
        elif kind == "bursty":
            one = workloads.bursty(args.rate, args.duration_s, args.on_s, args.off_s, seed=args.seed,
                                   tokens_from=tokens)
        else:
            one = workloads.diurnal(args.rate, args.duration_s, seed=args.seed, tokens_from=tokens)
        if one.requests == 0:
            raise InputError([f"--workload {kind} --rate {args.rate:g} --duration-s {args.duration_s:g} "
                              "draws no request: nothing to simulate (raise --rate or --duration-s)"])
    if len(one.models) == n:
        return one
    return workloads.split(one, n, args.zipf, seed=args.seed, names=names)


def costs(args: argparse.Namespace, overrides: dict[str, float] | None = None) -> CostsFor:
    """Each model's replica costs: its spec's load time and token latency unless a flag (or a
    `--param sim.<key>` value, already range-checked) sets them for every model."""
    values: dict[str, Any] = {
        "load_s": args.load_s, "schedule_s": args.schedule_s, "artifact_bytes": args.artifact_gb * GB,
        "fetch_bytes_per_s": args.fetch_gb_per_s * GB, "cache_hit_ratio": args.cache_hit,
        "jitter_fraction": args.jitter, "service_s": args.service_s,
        "prefill_tokens_per_s": args.prefill_tps, "decode_tokens_per_s": args.decode_tps,
    }
    values.update(overrides or {})

    def for_service(svc: ModelService) -> ReplicaCosts:
        return costs_from_spec(svc, **values)

    return for_service


def _load(filename: Path) -> list[ModelService]:
    try:
        return load_specs(filename)
    except SpecError as exc:  # each line names the file, as `zeroserve validate` does
        raise SpecError([f"{filename}: {line}" for line in exc.errors]) from None


def _check(args: argparse.Namespace) -> None:
    """Every flag out of its range, at once, before anything is read or run."""
    errors = check_flags(vars(args))
    if not args.filename.is_file():
        errors.append(f"-f = {args.filename}, no such file")
    for text in getattr(args, "param", None) or []:
        try:
            parse_param(text)
        except SweepError as exc:
            errors.extend(exc.errors)
    for flag in ("png", "csv"):  # found missing after the simulation otherwise
        out = getattr(args, flag, None)
        if out is not None and not out.parent.is_dir():
            errors.append(f"--{flag} = {out}, no such directory: {out.parent}")
    if errors:
        raise InputError(errors)


def _run(args: argparse.Namespace) -> int:
    _check(args)
    services = _load(args.filename)
    workload = build_workload(args, model_names(args, services))
    outcome = simulate(services, workload, costs(args), seed=args.seed, batch=args.batch)
    report: dict[str, Any] = outcome.summary.as_dict()
    report["wall_s"] = round(outcome.wall_s, 3)
    several = len(services) > 1  # a multi-model spec file: what each of its models costs
    if several:
        report["per_model"] = per_model(outcome.result)
    if not args.json:
        print(table(outcome.summary))
        if several:
            print(per_model_table(outcome.result))
    print(json.dumps(report, allow_nan=False))
    if args.png is not None:
        title = f"{args.filename.name} on {args.trace if args.workload == 'trace' else args.workload}"
        plot_run(outcome.result, args.png, title)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    _check(args)
    params = [parse_param(p) for p in args.param]
    services = _load(args.filename)
    workload = build_workload(args, model_names(args, services))
    rows = run_sweep(args.filename.read_text(), workload, params, lambda extra: costs(args, extra),
                     seed=args.seed, batch=args.batch)
    write_csv(rows, args.csv)
    print(f"wrote {args.csv} ({len(rows)} runs)", file=sys.stderr)
    names = [p.name for p in params]
    for row in rows:
        print(json.dumps(row, allow_nan=False))
    if args.png is not None:
        # Short point labels (the values); the title says which parameters they are.
        plot_pareto(rows, ["/".join(str(row[n]) for n in names) for row in rows], args.png,
                    f"{args.filename.name}: GPU-seconds vs cold starts and p99 ({'/'.join(names)})")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="zeroserve sim", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate one spec on one workload")
    _add_common(run)
    run.add_argument("--png", type=Path, help="plot of load and replicas over time")
    run.add_argument("--json", action="store_true", help="print only the JSON summary")
    sweep = sub.add_parser("sweep", help="simulate every combination of --param values")
    _add_common(sweep)
    sweep.add_argument("--param", action="append", required=True,
                       help="NAME=V1,V2,... (spec.scaling key, dotted section.key, or sim.<cost>)")
    sweep.add_argument("--csv", type=Path, default=Path("sweep.csv"))
    sweep.add_argument("--png", type=Path, help="Pareto plot")
    return top


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(_run(args) if args.command == "run" else _sweep(args))
    except (SpecError, InputError) as exc:
        for line in exc.errors:
            print(f"zeroserve sim: {line}", file=sys.stderr)
        return 2
    except TraceError as exc:
        print(f"zeroserve sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"zeroserve sim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
