"""The ModelService parser: defaults, every error at once, migration formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeroserve.spec import BUILTIN_MODELS, ScalingSpec, SpecError, load_specs, main, parse_specs
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
      image: kserve/sklearnserver:v0.14.0
      args: [--model_name=sklearn-iris]
      storageUri: gs://kfserving-examples/models/sklearn/1.0/model
""")
    assert svc.storage_uri == "gs://kfserving-examples/models/sklearn/1.0/model"
    assert svc.scaling.metric == "rps" and svc.scaling.target == 50
    assert svc.scaling.max_replicas == 3 and svc.scaling.container_concurrency == 4
    assert svc.runtime.kind == "command" and svc.runtime.image == "kserve/sklearnserver:v0.14.0"
    assert svc.runtime.args == ("--model_name=sklearn-iris",)


def test_kserve_conversion_refuses_what_it_cannot_carry_over() -> None:
    """No image guessed from a modelFormat (KServe takes it from a ServingRuntime), and no cpu
    scaling turned silently into concurrency scaling."""
    errors = _errors("""
kind: InferenceService
metadata: {name: sklearn-iris}
spec:
  predictor:
    scaleMetric: cpu
    model: {modelFormat: {name: sklearn}, storageUri: gs://bucket/model}
""")
    assert errors == [
        "spec.predictor.scaleMetric = cpu, must be concurrency or rps (cpu and memory scaling has no "
        "ModelService counterpart)",
        "spec.predictor: modelFormat sklearn with no image: zeroserve does not resolve KServe "
        "ServingRuntimes; give the predictor's model an image (and args), or write a ModelService"]


@pytest.mark.parametrize("scaling", ["5", "abc", "[1]", "true"])
def test_a_section_that_is_not_a_mapping_is_an_error_not_a_traceback(scaling: str) -> None:
    errors = _errors("kind: ModelService\nmetadata: {name: a}\n"
                     f"spec: {{runtime: {{model: iris}}, scaling: {scaling}}}")
    assert len(errors) == 1 and errors[0].startswith("spec.scaling = ")
    assert errors[0].endswith(", must be a mapping")


def test_negative_durations_and_sizes_name_the_bound() -> None:
    errors = _errors("kind: ModelService\nmetadata: {name: a}\nspec:\n  runtime: {model: iris}\n"
                     "  scaling: {stableWindow: -60s, scaleToZeroGracePeriod: -1}\n"
                     "  queue: {maxBodySize: -1Mi}\n")
    assert errors == ["spec.scaling.stableWindow = -60s, must be > 0",
                      "spec.scaling.scaleToZeroGracePeriod = -1, must be >= 0",
                      "spec.queue.maxBodySize = -1Mi, must be >= 0"]


def test_an_unknown_builtin_model_is_an_error() -> None:
    assert _errors("kind: ModelService\nmetadata: {name: a}\nspec: {runtime: {model: nosuchmodel}}") == [
        "spec.runtime.model = nosuchmodel, must be iris, tiny-llm or module.path:ClassName"]
    (svc,) = parse_specs("kind: ModelService\nmetadata: {name: a}\n"
                         "spec: {runtime: {model: 'mypkg.models:MyModel'}}")
    assert svc.runtime.model == "mypkg.models:MyModel"


def test_the_builtin_names_are_the_model_servers() -> None:
    from runtime.server.registry import BUILTIN

    assert set(BUILTIN) == set(BUILTIN_MODELS)


def test_validate_help_and_models_defined_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: zeroserve validate FILE")
    quickstart = str(ROOT / "examples" / "quickstart.yaml")
    assert main([quickstart, quickstart]) == 2
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{quickstart}: ok (iris, tiny-llm)"]
    assert out.err.splitlines() == [
        f"{quickstart}: metadata.name = {name}, is also defined in {quickstart} (the file is given twice)"
        for name in ("iris", "tiny-llm")]


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
