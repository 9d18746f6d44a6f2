"""The ModelService parser: defaults, every error at once, migration formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeroserve.spec import ScalingSpec, SpecError, load_specs, main, parse_specs
from zeroserve.spec_fields import parse_duration

ROOT = Path(__file__).resolve().parents[2]


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_specs(text)
    return e.value.errors


def test_quickstart_parses_with_knative_defaults() -> None:
    services = load_specs(ROOT / "examples" / "quickstart.yaml")
    assert [s.name for s in services] == ["iris", "tiny-llm"]
    iris = services[0]
    assert iris.scaling.min_replicas == 0
    assert iris.scaling.panic_window_percent == 10
    assert iris.scaling.max_scale_down_rate == 2
    assert iris.scaling.target_burst_capacity == 211
    assert services[1].runtime.protocol == "openai"


def test_defaults_are_knatives() -> None:
    (svc,) = parse_specs("kind: ModelService\nmetadata: {name: a}\nspec: {runtime: {model: iris}}")
    assert svc.scaling == ScalingSpec()
    assert svc.scaling.target == 100 and svc.scaling.target_utilization == 0.7
    assert svc.scaling.stable_window_s == 60 and svc.scaling.scale_to_zero_grace_s == 30
    assert svc.queue.max_queued == 10_000 and svc.queue.timeout_s == 600
    (rps,) = parse_specs("kind: ModelService\nmetadata: {name: a}\n"
                         "spec: {runtime: {model: iris}, scaling: {metric: rps}}")
    assert rps.scaling.target == 200


def test_all_errors_at_once_naming_field_and_rule() -> None:
    errors = _errors("""
kind: ModelService
metadata: {name: a}
spec:
  runtime: {model: iris, protocol: grpc, gpus: -1}
  scaling: {target: -1, stableWindow: soon, minReplicas: 5, maxReplicas: 2, colour: red}
  queue: {maxQueued: x}
""")
    assert errors == [
        "spec.runtime.protocol = grpc, must be one of v1, v2, openai",
        "spec.runtime.gpus = -1, must be >= 0",
        "spec.scaling.target = -1, must be > 0",
        "spec.scaling.stableWindow = soon, must be a duration like 30s, 500ms, 5m or a number of seconds",
        "spec.scaling.minReplicas = 5, must be <= maxReplicas (2)",
        "spec.scaling.colour: unknown field",
        "spec.queue.maxQueued = x, must be an integer",
    ]


def test_multi_document_errors_say_which_document() -> None:
    errors = _errors("kind: ModelService\nmetadata: {name: a}\nspec: {runtime: {model: iris}}\n---\n"
                     "kind: ModelService\nmetadata: {name: B}\nspec: {runtime: {}}\n")
    assert errors[0].startswith("document 2: metadata.name = B, must be a DNS label")
    assert errors[1].startswith("document 2: spec.runtime.model: required")


def test_yaml_syntax_error_is_one_line_not_a_traceback() -> None:
    errors = _errors("kind: ModelService\nmetadata: {name: a\n")
    assert len(errors) == 1 and errors[0].startswith("YAML at line")


def test_duplicate_names_and_wrong_kind() -> None:
    doc = "kind: ModelService\nmetadata: {name: a}\nspec: {runtime: {model: iris}}\n"
    assert _errors(doc + "---\n" + doc) == ["metadata.name = a, is defined twice"]
    assert _errors("kind: Deployment\nmetadata: {name: a}\n") == [
        "kind = Deployment, must be ModelService or InferenceService"]


def test_knative_annotations_fill_scaling() -> None:
    (svc,) = parse_specs("""
kind: ModelService
metadata:
  name: a
  annotations:
    autoscaling.knative.dev/target: "5"
    autoscaling.knative.dev/min-scale: "1"
    autoscaling.knative.dev/window: 120s
    autoscaling.knative.dev/scale-down-delay: 5m
spec: {runtime: {model: iris}, scaling: {minReplicas: 2}}
""")
    assert svc.scaling.target == 5
    assert svc.scaling.min_replicas == 2  # the explicit field wins over the annotation
    assert svc.scaling.stable_window_s == 120
    assert svc.scaling.scale_down_delay_s == 300


def test_kserve_inference_service_is_converted() -> None:
    (svc,) = parse_specs("""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: sklearn-iris}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 3
    scaleMetric: rps
    scaleTarget: 50
    containerConcurrency: 4
    model:
      modelFormat: {name: sklearn}
      storageUri: gs://kfserving-examples/models/sklearn/1.0/model
""")
    assert svc.storage_uri == "gs://kfserving-examples/models/sklearn/1.0/model"
    assert svc.scaling.metric == "rps" and svc.scaling.target == 50
    assert svc.scaling.max_replicas == 3 and svc.scaling.container_concurrency == 4
    assert svc.runtime.kind == "command" and svc.runtime.image == "kserve/sklearn"


def test_container_concurrency_caps_the_target() -> None:
    (svc,) = parse_specs("kind: ModelService\nmetadata: {name: a}\n"
                         "spec: {runtime: {model: iris}, scaling: {containerConcurrency: 4}}")
    assert svc.scaling.target == 4


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("500ms", 0.5), ("5m", 300), (2, 2),
                                               ("1h", 3600), ("x", None), (True, None)])
def test_durations(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_bad_storage_uri() -> None:
    errors = _errors("kind: ModelService\nmetadata: {name: a}\n"
                     "spec: {storageUri: ftp://x/y, runtime: {model: iris}}")
    assert errors == ["spec.storageUri = ftp://x/y, must be a URI with a scheme among file, http, "
                      "https, s3, gs, az, hf, pvc"]


def test_hf_runtime_needs_a_storage_uri() -> None:
    assert _errors("kind: ModelService\nmetadata: {name: a}\nspec: {runtime: {kind: hf}}") == [
        "spec.storageUri: required for the hf runtime (the model directory)"]


def test_validate_names_each_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ModelService\nmetadata: {name: a}\nspec:\n  runtime: {model: iris}\n"
                   "  scaling: {target: -1}\n")
    missing = tmp_path / "missing.yaml"
    assert main([str(bad), str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{bad}: spec.scaling.target = -1, must be > 0",
        f"{missing}: cannot read: No such file or directory",
    ]
