"""Reading the deployment files the way Docker Compose, kustomize and Kubernetes would, without them running.

Kubernetes objects validate against the schemas the kubernetes-validate package ships (strict: an unknown
field is an error, as `kubectl apply --validate=strict` would say); KEDA objects against the models that
cloudcoil-models-keda generates from KEDA's CRDs, made strict the same way.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "prod")
TIERS = ("store", "inference", "optimizer", "monitor")
KUBERNETES_VERSION = "1.32"
LLMK_IMAGES = ("llmk-core", "llmk-inference", "llmk-optimizer")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def llmk_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run an llmk image."""
    return {n: s for n, s in spec["services"].items() if str(s.get("image", "")).startswith(LLMK_IMAGES)}


# The only variables besides LLMK_ settings a container may set: the S3 credentials and region, which boto3
# reads itself from the standard places (so profiles, instance roles and web identities work unchanged);
# llmk's Settings deliberately never holds them. Any other name is a typo or a setting llmk does not read.
AWS_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"})


def settings_variables() -> set[str]:
    from llmk.config import Settings

    return {f"LLMK_{name.upper()}" for name in Settings.model_fields}


def check_llmk_command(args: list[str]) -> None:
    """Parse `llmk ARGS` with the real command tree (nothing runs); a wrong command or option raises."""
    command = llmk_command()
    path = ["llmk"]
    rest = list(args)
    while hasattr(command, "get_command"):  # a group (typer vendors its own click: no isinstance)
        assert rest, f"{' '.join(path)} needs a subcommand"
        sub = command.get_command(command.context_class(command, info_name=path[-1]), rest[0])
        assert sub is not None, f"no such command: {' '.join([*path, rest[0]])}"
        path.append(rest.pop(0))
        command = sub
    command.make_context(" ".join(path), rest)


def llmk_command() -> Any:
    import typer.main

    from llmk.cli.main import app

    return typer.main.get_command(app)


def kustomize() -> list[str]:
    """The kustomize that renders the overlays: a `kustomize` binary, or the one built into kubectl."""
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    message = "neither kustomize nor kubectl is on PATH; install one (kubectl embeds kustomize v5)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    done = subprocess.run([*kustomize(), str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kustomize failed on {directory}:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def validate(obj: dict[str, Any]) -> None:
    """Raise with the reason when `obj` is not a valid object of its kind (strict: no unknown fields)."""
    if obj.get("apiVersion", "").startswith("keda.sh/"):
        import jsonschema

        jsonschema.validate(obj, keda_schema(obj["kind"]))
        return
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@functools.cache
def keda_schema(kind: str) -> dict[str, Any]:
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, kind)
    schema = model.model_json_schema(by_alias=True, mode="validation")
    for node in _objects(schema):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
    # the generic object metadata is typed loosely in the models: check the fields objects here use
    schema.setdefault("required", [])
    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata", "spec"})
    return schema


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if obj["kind"] != "Pod" else spec
    return [*pod.get("initContainers", []), *pod.get("containers", [])]
