"""Migration: Knative autoscaling annotations and KServe InferenceServices read as ModelService fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_KNATIVE_ANNOTATIONS: dict[str, str] = {
    "autoscaling.knative.dev/target": "target",
    "autoscaling.knative.dev/min-scale": "minReplicas",
    "autoscaling.knative.dev/minScale": "minReplicas",
    "autoscaling.knative.dev/max-scale": "maxReplicas",
    "autoscaling.knative.dev/maxScale": "maxReplicas",
    "autoscaling.knative.dev/metric": "metric",
    "autoscaling.knative.dev/window": "stableWindow",
    "autoscaling.knative.dev/panic-window-percentage": "panicWindowPercent",
    "autoscaling.knative.dev/panic-threshold-percentage": "panicThresholdPercent",
    "autoscaling.knative.dev/scale-down-delay": "scaleDownDelay",
    "autoscaling.knative.dev/initial-scale": "initialScale",
    "autoscaling.knative.dev/activation-scale": "activationScale",
    "autoscaling.knative.dev/target-burst-capacity": "targetBurstCapacity",
    "autoscaling.knative.dev/target-utilization-percentage": "targetUtilizationPercent",
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "scaleToZeroPodRetentionPeriod",
}


def annotations_to_scaling(meta: Mapping[str, Any], scaling: dict[str, Any]) -> dict[str, Any]:
    """The scaling section with Knative annotations filling the fields it leaves unset."""
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        return scaling
    merged = dict(scaling)
    for key, field_name in _KNATIVE_ANNOTATIONS.items():
        if key in annotations and field_name not in merged:
            merged[field_name] = annotations[key]
    return merged


def inference_service_to_model_service(doc: Mapping[str, Any],
                                       errors: list[str] | None = None) -> dict[str, Any]:
    """A KServe InferenceService, mapped onto the fields a ModelService has. What has no
    ModelService counterpart is appended to `errors` (when given), each naming the field."""
    errors = errors if errors is not None else []
    spec = doc.get("spec") or {}
    predictor = spec.get("predictor") or {} if isinstance(spec, Mapping) else {}
    if not isinstance(predictor, Mapping):
        predictor = {}
    model = predictor.get("model") or {}
    for key in ("sklearn", "pytorch", "tensorflow", "onnx", "triton", "xgboost", "huggingface"):
        if key in predictor and not model:
            model = predictor[key]
    if not isinstance(model, Mapping):
        model = {}
    scaling: dict[str, Any] = {}
    for src, dst in (("minReplicas", "minReplicas"), ("maxReplicas", "maxReplicas"),
                     ("containerConcurrency", "containerConcurrency"), ("scaleTarget", "target")):
        if src in predictor:
            scaling[dst] = predictor[src]
    metric = predictor.get("scaleMetric")
    if metric is not None:
        if str(metric).lower() in ("rps", "concurrency"):
            scaling["metric"] = str(metric).lower()
        else:  # KServe's cpu/memory hand scaling to an HPA; zeroserve scales on requests only
            errors.append(f"spec.predictor.scaleMetric = {metric}, must be concurrency or rps "
                          "(cpu and memory scaling has no ModelService counterpart)")
    runtime: dict[str, Any] = {"kind": "command", "protocol": "v2"}
    if model.get("image"):
        runtime["image"] = model["image"]
    if model.get("protocolVersion") == "v1":
        runtime["protocol"] = "v1"
        runtime["readinessPath"] = "/v1/models/" + str((doc.get("metadata") or {}).get("name", ""))
    if model.get("command"):
        runtime["command"] = model["command"]
    if model.get("args"):
        runtime["args"] = model["args"]
    if "image" not in runtime and "command" not in runtime:
        # KServe picks the image from a ServingRuntime resource by modelFormat; zeroserve does not
        # read those, and a guessed image name would only fail later, at image pull.
        fmt = model.get("modelFormat") or {}
        fmt_name = fmt.get("name") if isinstance(fmt, Mapping) else None
        errors.append(f"spec.predictor: modelFormat {fmt_name or '?'} with no image: zeroserve does not "
                      "resolve KServe ServingRuntimes; give the predictor's model an image "
                      "(and args), or write a ModelService")
    out: dict[str, Any] = {"runtime": runtime, "scaling": scaling}
    if model.get("storageUri"):
        out["storageUri"] = model["storageUri"]
    return {"metadata": doc.get("metadata") or {}, "spec": out}
