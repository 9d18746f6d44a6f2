"""The ModelService spec: YAML in, frozen and validated objects out.

One parser for every front door (`zeroserve up`, the CRD controller, the simulator). Validation
happens here once; nothing downstream re-checks. Errors are collected, not raised one by one, so a
user sees every problem in a file at once, each naming its field and rule:
``spec.scaling.target = -1, must be > 0``.

Also accepted, for migration: Knative annotations on a ModelService and a KServe InferenceService.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from zeroserve.spec_fields import FieldReader, show
from zeroserve.spec_migration import annotations_to_scaling, inference_service_to_model_service

API_VERSION = "serving.zeroserve.io/v1alpha1"
KIND = "ModelService"

Protocol = Literal["v1", "v2", "openai"]
RuntimeKind = Literal["command", "builtin", "hf"]
Metric = Literal["concurrency", "rps"]
PolicyName = Literal["kpa", "histogram"]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
STORAGE_SCHEMES = ("file", "http", "https", "s3", "gs", "az", "hf", "pvc")
# The model server's built-in models (runtime.server.registry.BUILTIN, kept equal by a test); any
# other runtime.model must name a plugin class.
BUILTIN_MODELS = ("iris", "tiny-llm")
_PLUGIN_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SpecError(Exception):
    """Every problem found in a spec, one message per field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    kind: RuntimeKind = "builtin"
    image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    protocol: Protocol = "v2"
    readiness_path: str = "/v2/health/ready"
    gpus: int = 0
    gpu_memory_bytes: int = 0
    prewarm: int = 0
    port: int | None = None
    model: str | None = None
    load_time_s: float = 0.5
    token_latency_s: float = 0.01
    ready_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class ScalingSpec:
    policy: PolicyName = "kpa"
    metric: Metric = "concurrency"
    target: float = 100.0
    container_concurrency: int = 0
    target_utilization: float = 0.7
    min_replicas: int = 0
    max_replicas: int = 0
    initial_scale: int = 1
    activation_scale: int = 1
    stable_window_s: float = 60.0
    panic_window_percent: float = 10.0
    panic_threshold_percent: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_s: float = 30.0
    scale_to_zero_retention_s: float = 0.0
    target_burst_capacity: float = 211.0
    park: bool = False
    tick_s: float = 2.0


@dataclass(frozen=True, slots=True)
class QueueSpec:
    max_queued: int = 10_000
    timeout_s: float = 600.0
    max_body_bytes: int = 100 * 1024**2


@dataclass(frozen=True, slots=True)
class ScaleTargetRef:
    kind: str
    name: str
    api_version: str = "apps/v1"


@dataclass(frozen=True, slots=True)
class ModelService:
    name: str
    namespace: str = "default"
    storage_uri: str | None = None
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    queue: QueueSpec = field(default_factory=QueueSpec)
    hosts: tuple[str, ...] = ()
    scale_target_ref: ScaleTargetRef | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    source_path: Path | None = None

    @property
    def key(self) -> str:
        return self.name


# --- the ModelService ------------------------------------------------------------------------


def _parse_runtime(r: FieldReader) -> RuntimeSpec:
    d = RuntimeSpec()
    command = r.strings("command")
    model = r.string("model")
    kind_default = "command" if command else "builtin"
    kind = cast(RuntimeKind, r.choice("kind", ("command", "builtin", "hf"), kind_default))
    protocol_default = "openai" if kind == "hf" or model == "tiny-llm" else d.protocol
    protocol = cast(Protocol, r.choice("protocol", ("v1", "v2", "openai"), protocol_default))
    runtime = RuntimeSpec(
        kind=kind,
        image=r.string("image"),
        command=command,
        args=r.strings("args"),
        env=r.mapping("env"),
        protocol=protocol,
        readiness_path=r.string("readinessPath", d.readiness_path) or d.readiness_path,
        gpus=r.integer("gpus", d.gpus, ge=0),
        gpu_memory_bytes=r.size("gpuMemory", d.gpu_memory_bytes),
        prewarm=r.integer("prewarm", 1 if kind == "hf" else 0, ge=0),
        port=r.integer("port", 0, ge=0) or None,
        model=model,
        load_time_s=r.duration("loadTime", d.load_time_s),
        token_latency_s=r.duration("tokenLatency", d.token_latency_s),
        ready_timeout_s=r.duration("readyTimeout", d.ready_timeout_s, gt=0),
    )
    if runtime.readiness_path and not runtime.readiness_path.startswith("/"):
        r.fail("readinessPath", runtime.readiness_path, "must start with /")
    if kind == "command" and not command and not runtime.image:
        r.errors.append(f"{r.prefix}: kind command needs command (local) or image (kubernetes)")
    if kind == "builtin" and not model:
        r.errors.append(f"{r.prefix}.model: required for the builtin runtime "
                        "(iris, tiny-llm or module:Class)")
    elif kind == "builtin" and model and model not in BUILTIN_MODELS and not _PLUGIN_RE.match(model):
        r.fail("model", model, "must be " + ", ".join(BUILTIN_MODELS) + " or module.path:ClassName")
    r.unknown()
    return runtime


def _parse_scaling(r: FieldReader) -> ScalingSpec:
    d = ScalingSpec()
    metric = cast(Metric, r.choice("metric", ("concurrency", "rps"), d.metric))
    target_default = 100.0 if metric == "concurrency" else 200.0
    s = ScalingSpec(
        policy=cast(PolicyName, r.choice("policy", ("kpa", "histogram"), d.policy)),
        metric=metric,
        target=r.number("target", target_default, gt=0),
        container_concurrency=r.integer("containerConcurrency", d.container_concurrency, ge=0),
        target_utilization=r.number("targetUtilizationPercent", d.target_utilization * 100, gt=0,
                                    le=100) / 100,
        min_replicas=r.integer("minReplicas", d.min_replicas, ge=0),
        max_replicas=r.integer("maxReplicas", d.max_replicas, ge=0),
        initial_scale=r.integer("initialScale", d.initial_scale, ge=0),
        activation_scale=r.integer("activationScale", d.activation_scale, ge=1),
        stable_window_s=r.duration("stableWindow", d.stable_window_s, gt=0),
        panic_window_percent=r.number("panicWindowPercent", d.panic_window_percent, ge=1, le=100),
        panic_threshold_percent=r.number("panicThresholdPercent", d.panic_threshold_percent, gt=100),
        max_scale_up_rate=r.number("maxScaleUpRate", d.max_scale_up_rate, gt=1),
        max_scale_down_rate=r.number("maxScaleDownRate", d.max_scale_down_rate, gt=1),
        scale_down_delay_s=r.duration("scaleDownDelay", d.scale_down_delay_s),
        scale_to_zero_grace_s=r.duration("scaleToZeroGracePeriod", d.scale_to_zero_grace_s),
        scale_to_zero_retention_s=r.duration("scaleToZeroPodRetentionPeriod",
                                             d.scale_to_zero_retention_s),
        target_burst_capacity=r.number("targetBurstCapacity", d.target_burst_capacity, ge=-1),
        park=r.boolean("park", d.park),
        tick_s=r.duration("tickInterval", d.tick_s, gt=0),
    )
    if s.max_replicas and s.min_replicas > s.max_replicas:
        r.fail("minReplicas", s.min_replicas, f"must be <= maxReplicas ({s.max_replicas})")
    if s.max_replicas and s.initial_scale > s.max_replicas:
        r.fail("initialScale", s.initial_scale, f"must be <= maxReplicas ({s.max_replicas})")
    if s.max_replicas and s.activation_scale > s.max_replicas:
        r.fail("activationScale", s.activation_scale, f"must be <= maxReplicas ({s.max_replicas})")
    if s.container_concurrency and s.metric == "concurrency" and s.target > s.container_concurrency:
        # Knative clamps the soft target to the hard limit; so do we, silently, as users expect.
        s = _replace(s, target=float(s.container_concurrency))
    r.unknown()
    return s


def _replace(s: ScalingSpec, **changes: Any) -> ScalingSpec:
    from dataclasses import replace

    return replace(s, **changes)


def _parse_queue(r: FieldReader) -> QueueSpec:
    d = QueueSpec()
    q = QueueSpec(
        max_queued=r.integer("maxQueued", d.max_queued, ge=0),
        timeout_s=r.duration("timeout", d.timeout_s, gt=0),
        max_body_bytes=r.size("maxBodySize", d.max_body_bytes),
    )
    r.unknown()
    return q


def _check_storage_uri(r: FieldReader, uri: str | None) -> None:
    if uri is None:
        return
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES or not rest:
        r.fail("storageUri", uri, "must be a URI with a scheme among " + ", ".join(STORAGE_SCHEMES))



def _parse_model_service(doc: Mapping[str, Any], errors: list[str], where: str,
                         source: Path | None) -> ModelService | None:
    before = len(errors)
    meta = FieldReader(errors, f"{where}metadata", doc.get("metadata"))
    name = meta.string("name")
    namespace = meta.string("namespace", "default") or "default"
    labels = meta.mapping("labels")
    if not name:
        errors.append(f"{where}metadata.name: required")
        name = "?"
    elif not _NAME_RE.match(name) or len(name) > 63:
        meta.fail("name", name, "must be a DNS label (lowercase letters, digits, '-', '.')")
    spec_raw = doc.get("spec") or {}
    if not isinstance(spec_raw, Mapping):
        errors.append(f"{where}spec = {show(spec_raw)}, must be a mapping")
        return None
    spec_raw = dict(spec_raw)
    scaling_raw = spec_raw.get("scaling") or {}
    if isinstance(scaling_raw, Mapping):  # a non-mapping is reported by the scaling reader below
        spec_raw["scaling"] = annotations_to_scaling(meta.data, dict(scaling_raw))
    spec = FieldReader(errors, f"{where}spec", spec_raw)
    storage_uri = spec.string("storageUri")
    _check_storage_uri(spec, storage_uri)
    runtime = _parse_runtime(spec.child("runtime"))
    scaling = _parse_scaling(spec.child("scaling"))
    queue = _parse_queue(spec.child("queue"))
    hosts = spec.strings("hosts")
    if runtime.kind == "hf" and not storage_uri:
        errors.append(f"{spec.prefix}.storageUri: required for the hf runtime (the model directory)")
    ref_reader = spec.child("scaleTargetRef")
    ref = None
    if spec.has("scaleTargetRef"):
        kind = ref_reader.string("kind", "Deployment") or "Deployment"
        ref_name = ref_reader.string("name")
        api_version = ref_reader.string("apiVersion", "apps/v1") or "apps/v1"
        if not ref_name:
            errors.append(f"{ref_reader.prefix}.name: required")
        ref = ScaleTargetRef(kind=kind, name=ref_name or "", api_version=api_version)
        ref_reader.unknown()
    spec.unknown()
    if len(errors) > before:
        return None
    return ModelService(name=name, namespace=namespace, storage_uri=storage_uri, runtime=runtime,
                        scaling=scaling, queue=queue, hosts=hosts, scale_target_ref=ref,
                        labels=labels, source_path=source)




def _documents(text: str, errors: list[str]) -> Iterator[tuple[int, Any]]:
    try:
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is not None:
                yield i, doc
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        errors.append(f"YAML{where}: {problem}")


def parse_specs(text: str, source: Path | None = None) -> list[ModelService]:
    """All ModelServices in a YAML text (several documents allowed); SpecError lists every error."""
    errors: list[str] = []
    services: list[ModelService] = []
    docs = list(_documents(text, errors))
    multi = len(docs) > 1
    for i, doc in docs:
        where = f"document {i + 1}: " if multi else ""
        if not isinstance(doc, Mapping):
            errors.append(f"{where}must be a mapping with apiVersion, kind, metadata and spec")
            continue
        kind = doc.get("kind")
        if kind == "InferenceService":
            problems: list[str] = []
            doc = inference_service_to_model_service(doc, problems)
            if problems:
                errors += [where + problem for problem in problems]
                continue
        elif kind != KIND:
            errors.append(f"{where}kind = {show(kind)}, must be ModelService or InferenceService")
            continue
        elif doc.get("apiVersion") not in (API_VERSION, None):
            errors.append(f"{where}apiVersion = {show(doc.get('apiVersion'))}, must be {API_VERSION}")
            continue
        svc = _parse_model_service(doc, errors, where, source)
        if svc is not None:
            services.append(svc)
    seen: set[str] = set()
    for svc in services:
        if svc.name in seen:
            errors.append(f"metadata.name = {svc.name}, is defined twice")
        seen.add(svc.name)
    if not docs and not errors:
        errors.append("no ModelService found")
    if errors:
        raise SpecError(errors)
    return services


def load_specs(path_or_text: str | Path) -> list[ModelService]:
    """Parse a file (a path) or, when given a string holding YAML, that text."""
    if isinstance(path_or_text, Path) or "\n" not in str(path_or_text):
        path = Path(path_or_text)
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError([f"cannot read: {e.strerror or e}"]) from None  # callers name the file
        return parse_specs(text, path.resolve())
    return parse_specs(str(path_or_text))


def main(argv: list[str]) -> int:
    """`zeroserve validate FILE...`: 0 when every spec is valid, 2 otherwise. The files are checked
    as one set, as `zeroserve up -f A -f B` would load them: a model defined twice is an error."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: zeroserve validate FILE [FILE...]\n\n"
              "Check ModelService / InferenceService YAML files; every error is listed, with its field.",
              file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    status = 0
    defined: dict[tuple[str, str], str] = {}
    for arg in argv:
        try:
            services = load_specs(Path(arg))
        except SpecError as e:
            status = 2
            for line in e.errors:
                print(f"{arg}: {line}", file=sys.stderr)
            continue
        clashes = duplicate_names(services, defined, arg)
        for line in clashes:
            print(f"{arg}: {line}", file=sys.stderr)
        if clashes:
            status = 2
            continue
        names = ", ".join(s.name for s in services)
        print(f"{arg}: ok ({names})")
    return status


def duplicate_names(services: list[ModelService], defined: dict[tuple[str, str], str],
                    source: str, *, by_namespace: bool = True) -> list[str]:
    """Errors for the models of `source` already in `defined` (which this fills in). Within one
    file the parser already refuses a name used twice; this is the same rule across files."""
    errors = []
    for svc in services:
        key = (svc.namespace if by_namespace else "", svc.name)
        if key in defined:
            again = " (the file is given twice)" if defined[key] == source else ""
            errors.append(f"metadata.name = {svc.name}, is also defined in {defined[key]}{again}")
        else:
            defined[key] = source
    return errors
