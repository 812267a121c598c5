"""infra/k8s rendered by kustomize for each overlay, and every object validated offline against the
Kubernetes and KEDA schemas, plus the rules a cluster would only show at run time."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlparse

import pytest
from deploy_support import (
    AWS_VARIABLES,
    K8S,
    OVERLAYS,
    ROOT,
    check_llmk_command,
    containers,
    render,
    settings_variables,
    validate,
)

SERVING = {"llmk-store", "llmk-inference", "llmk-optimizer"}


def objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(K8S / "overlays" / overlay)


def of_kind(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects(overlay) if o["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    rendered = objects(overlay)
    assert rendered
    for obj in rendered:
        try:
            validate(obj)
        except Exception as e:  # the schema's message, with the object it is about
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {str(e).splitlines()[0]}")


def test_an_invalid_object_is_caught() -> None:
    """The validators are strict: a misspelt field fails, in a Kubernetes object and in a KEDA one."""
    deployment = json.loads(json.dumps(of_kind("dev", "Deployment")["llmk-store"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 1}
    with pytest.raises(Exception, match="grcp"):
        validate(deployment)
    scaled = json.loads(json.dumps(of_kind("dev", "ScaledObject")["llmk-inference"]))
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(Exception, match="maxReplicas"):
        validate(scaled)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_tier_has_a_deployment_and_the_serving_ones_a_service(overlay: str) -> None:
    deployments = of_kind(overlay, "Deployment")
    assert SERVING | {"llmk-monitor"} <= set(deployments)
    services = of_kind(overlay, "Service")
    assert {"store", "inference", "optimizer", "postgres", "rabbitmq"} <= set(services)
    for name in ("store", "inference", "optimizer"):
        selector = services[name]["spec"]["selector"]
        labels = deployments[f"llmk-{name}"]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"service {name} selects no pod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_llmk_commands_with_llmk_settings(overlay: str) -> None:
    known = settings_variables()
    configmaps = of_kind(overlay, "ConfigMap")
    for cm in configmaps.values():
        if cm["metadata"]["name"].startswith("llmk"):
            assert not set(cm["data"]) - known, cm["data"]
    for secret in of_kind(overlay, "Secret").values():
        if secret["metadata"]["name"].startswith("llmk"):
            assert not {k for k in secret["data"] if k.startswith("LLMK_")} - known
            assert not {k for k in secret["data"] if k.startswith("AWS_")} - AWS_VARIABLES
    for obj in objects(overlay):
        for c in containers(obj):
            if not c["image"].split("/")[-1].startswith("llmk-"):
                continue
            assert "command" not in c, f"{c['name']}: the image's entry point is llmk"
            check_llmk_command(c["args"])
            named = {e["name"] for e in c.get("env", [])}
            unknown = {n for n in named if n.startswith("LLMK_")} - known
            unknown |= {n for n in named if n.startswith("AWS_")} - AWS_VARIABLES
            assert not unknown, f"{c['name']} sets {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_tiers_are_probed_over_grpc_health_and_exported_to_prometheus(overlay: str) -> None:
    for name, deployment in of_kind(overlay, "Deployment").items():
        if name not in SERVING:
            continue
        (container,) = containers(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == 50051, f"{name} {probe}"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        port = annotations["prometheus.io/port"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(port) in {p["containerPort"] for p in container["ports"]}
        config = of_kind(overlay, "ConfigMap")
        llmk_config = next(c for n, c in config.items() if n.startswith("llmk-"))
        assert llmk_config["data"]["LLMK_METRICS_PORT"] == port
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"]
        assert not security["allowPrivilegeEscalation"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_queue_consumers_on_their_queues(overlay: str) -> None:
    definitions = json.loads((ROOT / "infra" / "rabbitmq" / "definitions.json").read_text())
    queues = {q["name"] for q in definitions["queues"]}
    deployments = of_kind(overlay, "Deployment")
    auth = of_kind(overlay, "TriggerAuthentication")
    secrets = of_kind(overlay, "Secret")
    scaled = of_kind(overlay, "ScaledObject")
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()}
    assert targets == {"llmk-inference", "llmk-optimizer"}
    for s in scaled.values():
        assert s["spec"]["scaleTargetRef"]["name"] in deployments
        (trigger,) = s["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] in queues
        ref = auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"][0]
        assert ref["key"] == "LLMK_BROKER_URL"
        if secrets:  # generated in dev (name with a hash); created by hand in prod
            assert ref["name"] in secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_job_migrates_then_imports_the_model_the_workers_serve(overlay: str) -> None:
    job = of_kind(overlay, "Job")["llmk-migrate"]
    pod = job["spec"]["template"]["spec"]
    llmk_steps = [c["args"] for c in pod["initContainers"] if c["image"].split("/")[-1].startswith("llmk-")]
    assert llmk_steps == [["db", "upgrade"]]
    (importer,) = pod["containers"]
    served = containers(of_kind(overlay, "Deployment")["llmk-inference"])[0]
    model = next(e["value"] for e in served["env"] if e["name"] == "LLMK_SERVE_MODEL").split("@")[0]
    assert importer["args"][:2] == ["store", "import"]
    assert "--if-missing" in importer["args"]
    assert importer["args"][importer["args"].index("--model") + 1] == model


def llmk_config(overlay: str) -> dict[str, str]:
    return next(c["data"] for n, c in of_kind(overlay, "ConfigMap").items() if n.startswith("llmk-"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_are_in_a_bucket_not_on_a_shared_volume_and_disruptions_are_bounded(overlay: str) -> None:
    from services.store.adapters.s3_bucket import Location

    config = llmk_config(overlay)
    Location.parse(config["LLMK_OBJECTS_URL"])  # an s3:// URL, or this raises
    assert "LLMK_OBJECT_DIR" not in config
    assert not of_kind(overlay, "PersistentVolumeClaim"), (
        "no shared volume: objects and state are in the bucket"
    )
    assert "LLMK_OPTIMIZER_STATE_DIR" not in config, "optimizer state goes to the bucket, beside the objects"
    budgets = of_kind(overlay, "PodDisruptionBudget")
    assert {"llmk-store", "llmk-inference"} <= set(budgets)
    for obj in objects(overlay):
        for c in containers(obj):
            assert all(m["mountPath"] != "/objects" for m in c.get("volumeMounts", [])), c["name"]
            assert "LLMK_STORE_OBJECT_DIR" not in {e["name"] for e in c.get("env", [])}, c["name"]
    (served,) = containers(of_kind(overlay, "Deployment")["llmk-inference"])
    assert "/data" in {m["mountPath"] for m in served["volumeMounts"]}, "the worker's block cache"


def test_dev_runs_minio_with_its_health_checks_and_creates_the_bucket_before_the_import() -> None:
    from services.store.adapters.s3_bucket import Location

    config = llmk_config("dev")
    where = Location.parse(config["LLMK_OBJECTS_URL"])
    endpoint = urlparse(config["LLMK_S3_ENDPOINT"])
    service = of_kind("dev", "Service")[str(endpoint.hostname)]
    assert endpoint.port in {p["port"] for p in service["spec"]["ports"]}
    minio = of_kind("dev", "StatefulSet")["minio"]
    assert service["spec"]["selector"].items() <= minio["spec"]["template"]["metadata"]["labels"].items()
    (server,) = containers(minio)
    assert server["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"

    secrets = {n.rsplit("-", 1)[0]: s for n, s in of_kind("dev", "Secret").items()}

    def secret(name: str, key: str) -> str:
        return base64.b64decode(secrets[name]["data"][key]).decode()

    assert secret("llmk", "AWS_ACCESS_KEY_ID") == secret("minio", "MINIO_ROOT_USER")
    assert secret("llmk", "AWS_SECRET_ACCESS_KEY") == secret("minio", "MINIO_ROOT_PASSWORD")
    assert len(secret("minio", "MINIO_ROOT_PASSWORD")) >= 8  # MinIO refuses shorter ones

    pod = of_kind("dev", "Job")["llmk-migrate"]["spec"]["template"]["spec"]
    first = pod["initContainers"][0]  # before the schema and the import: the bucket exists
    assert first["image"].startswith("minio/mc:RELEASE.")
    script = " ".join(first["args"])
    assert f"mb --ignore-existing llmk/{where.bucket}" in script
    assert f"@{endpoint.hostname}:{endpoint.port}" in script
    assert {e["secretRef"]["name"].rsplit("-", 1)[0] for e in first["envFrom"]} == {"minio"}


def test_prod_points_at_a_managed_bucket_and_runs_no_minio() -> None:
    from services.store.adapters.s3_bucket import Location

    config = llmk_config("prod")
    assert (
        Location.parse(config["LLMK_OBJECTS_URL"]).bucket
        != Location.parse(llmk_config("dev")["LLMK_OBJECTS_URL"]).bucket
    )
    assert config["LLMK_S3_ENDPOINT"] == ""  # AWS itself; a MinIO-style service sets its URL here
    assert "minio" not in of_kind("prod", "Service")
    assert not of_kind("prod", "Secret"), "prod's credentials come from the cluster's secret manager"


def test_dev_runs_its_own_postgres_and_rabbitmq_prod_points_at_managed_ones() -> None:
    assert {"postgres", "rabbitmq"} <= set(of_kind("dev", "StatefulSet"))
    rabbit = of_kind("dev", "ConfigMap")
    assert any(n.startswith("rabbitmq-") and "definitions.json" in c["data"] for n, c in rabbit.items())
    external = of_kind("prod", "Service")
    assert external["postgres"]["spec"]["type"] == external["rabbitmq"]["spec"]["type"] == "ExternalName"
    assert not of_kind("prod", "StatefulSet")


def test_prod_inference_gets_a_gpu_and_the_cuda_image() -> None:
    (container,) = containers(of_kind("prod", "Deployment")["llmk-inference"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cu128")
    assert {"name": "LLMK_DEVICE", "value": "cuda"} in container["env"]
    (dev,) = containers(of_kind("dev", "Deployment")["llmk-inference"])
    assert "nvidia.com/gpu" not in dev["resources"].get("limits", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_a_deployment_behind_a_service_probed_over_http(overlay: str) -> None:
    deployment = of_kind(overlay, "Deployment")["llmk-api"]
    (container,) = containers(deployment)
    assert container["args"][:2] == ["serve", "api"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMK_INFERENCE_ADDRESS"] == "inference:50051"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = of_kind(overlay, "Service")["api"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8000
