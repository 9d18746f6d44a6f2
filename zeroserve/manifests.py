"""`zeroserve manifests --image IMG --namespace NS [--out DIR]`: render the Kubernetes install.

The YAML under manifests/ is the source, written for the default image and namespace; rendering
substitutes them structurally (exact namespace values, image references) rather than as text, so
a label that happens to contain the word "zeroserve" is never touched. `manifests/install.yaml` is
this command's output for the defaults, minus the Secret (tests check it is up to date).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
DEFAULT_IMAGE = "ghcr.io/zeroserve/zeroserve:0.1.0"
DEFAULT_NAMESPACE = "zeroserve-system"
STATS_SECRET = "zeroserve-stats-token"
# Apply order: the namespace and CRD before anything that lives in them or refers to them.
PARTS = ("namespace.yaml", "crd.yaml", "rbac.yaml", "node-cache.yaml", "autoscaler.yaml",
         "activator.yaml", "network-policies.yaml")
EXAMPLES = ("iris.yaml", "llama-vllm.yaml")
DASHBOARD = "grafana-dashboard.json"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

HEADER = """\
# zeroserve: Knative-free scale to zero for model servers. Rendered by
#   zeroserve manifests --image {image} --namespace {namespace}
# Apply:  kubectl apply -f install.yaml   (then one ModelService per model, see examples/)
"""
SECRET_NOTE = """\
# The activator authenticates its load reports with a token from the Secret {secret}; this file
# does not carry one (a token in a repository is no secret). Create it first:
#   kubectl create namespace {namespace}
#   kubectl -n {namespace} create secret generic {secret} --from-literal=token=$(openssl rand -hex 32)
# or render with `zeroserve manifests`, which adds a freshly generated one.
"""


def _substitute(node: Any, image: str, namespace: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, image, namespace) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, image, namespace) for v in node]
    if isinstance(node, str):
        if node == DEFAULT_NAMESPACE:
            return namespace
        return node.replace(DEFAULT_IMAGE, image)
    return node


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def stats_secret(namespace: str, token: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": STATS_SECRET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "zeroserve"}},
            "stringData": {"token": token}}


def render(image: str = DEFAULT_IMAGE, namespace: str = DEFAULT_NAMESPACE,
           token: str | None = None) -> list[dict[str, Any]]:
    """Every object of the install, in apply order; with a stats Secret when a token is given."""
    docs: list[dict[str, Any]] = []
    for part in PARTS:
        docs += [_substitute(d, image, namespace) for d in load(part)]
    if token is not None:
        docs.insert(1, stats_secret(namespace, token))
    return docs


def render_examples(namespace: str = DEFAULT_NAMESPACE) -> dict[str, list[dict[str, Any]]]:
    return {name: [_substitute(d, DEFAULT_IMAGE, namespace) for d in load(f"examples/{name}")]
            for name in EXAMPLES}


def dump(docs: list[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)


def install_text(image: str = DEFAULT_IMAGE, namespace: str = DEFAULT_NAMESPACE,
                 token: str | None = None) -> str:
    note = "" if token is not None else SECRET_NOTE.format(secret=STATS_SECRET, namespace=namespace)
    return HEADER.format(image=image, namespace=namespace) + note + dump(
        render(image, namespace, token))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zeroserve manifests",
                                     description="Render the Kubernetes install of zeroserve.")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"zeroserve image (default {DEFAULT_IMAGE})")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help=f"namespace of the install and its models (default {DEFAULT_NAMESPACE})")
    parser.add_argument("--out", type=Path, help="write install.yaml, examples/ and the dashboard here "
                                                 "(default: install.yaml to stdout)")
    parser.add_argument("--no-secret", action="store_true",
                        help="leave out the generated stats-token Secret (create it yourself)")
    args = parser.parse_args(argv)
    if not _DNS_LABEL.match(args.namespace):
        print(f"zeroserve manifests: --namespace = {args.namespace}, must be a DNS label", file=sys.stderr)
        return 2
    if not args.image.strip() or any(c.isspace() for c in args.image):
        print(f"zeroserve manifests: --image = {args.image!r}, must be an image reference",
              file=sys.stderr)
        return 2
    if not (MANIFESTS / "crd.yaml").is_file():
        print(f"zeroserve manifests: the manifest sources are not at {MANIFESTS} (run from a source "
              "checkout)", file=sys.stderr)
        return 1
    token = None if args.no_secret else secrets.token_hex(32)
    text = install_text(args.image, args.namespace, token)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        (args.out / "examples").mkdir(parents=True, exist_ok=True)
        (args.out / "install.yaml").write_text(text)
        for name, docs in render_examples(args.namespace).items():
            (args.out / "examples" / name).write_text(dump(docs))
        dashboard = json.loads((MANIFESTS / DASHBOARD).read_text())
        (args.out / DASHBOARD).write_text(json.dumps(dashboard, indent=2) + "\n")
    except OSError as e:
        print(f"zeroserve manifests: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/install.yaml, {args.out}/examples/, {args.out}/{DASHBOARD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
