"""The manifests validate offline against a pinned Kubernetes version; the CRD agrees with spec.py."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from emulator import openapi_to_jsonschema
from k8s_harness import ROOT, load_crd

from autoscaler.backends.k8s_render import RenderConfig, render_deployment, render_service
from zeroserve import manifests
from zeroserve.spec import parse_specs

K8S_VERSION = "1.31.0"  # pinned: the oldest release still in upstream support when written


def k8s_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def crd_validator() -> jsonschema.Draft7Validator:
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(openapi_to_jsonschema(schema))


def test_committed_install_is_the_rendered_one() -> None:
    assert (ROOT / "manifests" / "install.yaml").read_text() == manifests.install_text(), \
        "manifests/install.yaml is stale: regenerate it with zeroserve.manifests.install_text()"


@pytest.mark.parametrize(("image", "namespace", "token"), [
    (manifests.DEFAULT_IMAGE, manifests.DEFAULT_NAMESPACE, None),
    ("registry.example.com/ml/zeroserve@sha256:" + "0" * 64, "ml-serving", "t0ken"),
])
def test_every_object_validates_against_kubernetes(image: str, namespace: str, token: str | None) -> None:
    docs = manifests.render(image, namespace, token)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted({"Namespace", "CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding",
                            "ConfigMap", "DaemonSet", "Deployment", "Service", "PodDisruptionBudget",
                            "NetworkPolicy"} | ({"Secret"} if token else set()))
    for doc in docs:
        k8s_validate(doc)
        meta = doc["metadata"]
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert meta["namespace"] == namespace, doc["kind"]
    text = yaml.safe_dump_all(docs)
    assert manifests.DEFAULT_IMAGE not in text or image == manifests.DEFAULT_IMAGE
    assert (manifests.DEFAULT_NAMESPACE in text) == (namespace == manifests.DEFAULT_NAMESPACE)


def test_validation_is_live() -> None:
    deploy = next(d for d in manifests.render() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deploy)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        crd_validator().validate({"apiVersion": "serving.zeroserve.io/v1alpha1", "kind": "ModelService",
                                  "metadata": {"name": "x"}, "spec": {"scaling": {"target": -1}}})


def test_install_shape() -> None:
    docs = manifests.render()
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert not any(d["kind"].startswith("Cluster") for d in docs), "no cluster-wide RBAC"
    for d in docs:
        for rule in d.get("rules") or []:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    assert by[("Deployment", "zeroserve-autoscaler")]["spec"]["replicas"] == 2
    assert by[("Deployment", "zeroserve-activator")]["spec"]["replicas"] >= 2
    assert ("PodDisruptionBudget", "zeroserve-activator") in by
    for name in ("zeroserve-autoscaler", "zeroserve-activator"):
        container = by[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"] and container["livenessProbe"]
        assert container["resources"]["requests"]["cpu"]
    crd = by[("CustomResourceDefinition", "modelservices.serving.zeroserve.io")]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Desired", "Ready", "Status", "Age"]


def test_examples_are_valid_model_services() -> None:
    validator = crd_validator()
    examples = manifests.render_examples()
    assert sorted(examples) == ["iris.yaml", "llama-vllm.yaml"]
    for docs in examples.values():
        for doc in docs:
            validator.validate(doc)
            svc = parse_specs(json.dumps(doc))[0]
            for rendered in (render_deployment(svc, RenderConfig(manifests.DEFAULT_IMAGE), None, 1),
                             render_service(svc, {"a": "b"}, 8080, None)):
                k8s_validate(rendered)


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, as the API server does it: fill absent fields that have a default."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    out = dict(value)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _apply_defaults(sub, out[key])
    return out


@pytest.mark.parametrize("spec", [
    {"runtime": {"model": "iris"}},
    {"runtime": {"kind": "command", "image": "x"}, "scaling": {"metric": "rps"}},
    {"storageUri": "s3://models/llama/", "runtime": {"kind": "hf"},
     "scaling": {"containerConcurrency": 4}},
])
def test_crd_defaults_agree_with_the_parser(spec: dict[str, Any]) -> None:
    schema = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    doc = {"apiVersion": "serving.zeroserve.io/v1alpha1", "kind": "ModelService",
           "metadata": {"name": "m"}, "spec": spec}
    defaulted = _apply_defaults(schema, doc)
    assert defaulted["spec"]["scaling"]["stableWindow"] == "60s"  # defaults did apply
    assert parse_specs(json.dumps(defaulted)) == parse_specs(json.dumps(doc))


def test_gpu_deployment_rendering() -> None:
    docs = manifests.render_examples()["llama-vllm.yaml"]
    svc = parse_specs(json.dumps(docs[0]))[0]
    d = render_deployment(svc, RenderConfig("zs:1"), None, 0)
    pod = d["spec"]["template"]["spec"]
    runtime, init = pod["containers"][0], pod["initContainers"][0]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/health"
    assert runtime["args"][:2] == ["--model", "/mnt/models"] and "8000" in runtime["args"]
    assert init["args"] == ["storage-init", svc.storage_uri, "/mnt/models"]
    cache = next(v for v in pod["volumes"] if v["name"] == "node-cache")
    assert cache["hostPath"]["path"] == "/var/cache/zeroserve"
    assert d["spec"]["progressDeadlineSeconds"] >= 20 * 60 + 600
    assert "livenessProbe" not in runtime  # a slow load must not be killed


def test_dashboard_uses_the_documented_metrics() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    documented = set(re.findall(r"zeroserve_[a-z_]+", design))
    dashboard = json.loads((ROOT / "manifests" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"zeroserve_[a-z_]+", target["expr"]):
                used.add(re.sub(r"_(bucket|count|sum)$", "", name))
    assert used and used <= documented, used - documented
    assert {"zeroserve_desired_replicas", "zeroserve_cold_start_seconds"} <= used


def test_cli_renders_to_a_folder(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "zeroserve", "manifests", "--image", "zs:2",
                          "--namespace", "ml", "--out", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all((tmp_path / "install.yaml").read_text()) if d]
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert len(secret["stringData"]["token"]) == 64
    assert (tmp_path / "examples" / "iris.yaml").exists()
    bad = subprocess.run([sys.executable, "-m", "zeroserve", "manifests", "--namespace", "Bad_NS"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "--namespace" in bad.stderr
