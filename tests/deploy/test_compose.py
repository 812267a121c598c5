"""docker-compose.yml, its RabbitMQ definitions and its Prometheus configuration, checked without Docker:
what `docker compose up` would trip over the first time someone runs it."""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import pytest
import yaml
from deploy_support import (
    AWS_VARIABLES,
    ROOT,
    TIERS,
    check_llmk_command,
    compose,
    llmk_services,
    settings_variables,
)

SPEC = compose()
SERVICES = SPEC["services"]
LLMK = llmk_services(SPEC)
DEFINITIONS = json.loads((ROOT / "infra" / "rabbitmq" / "definitions.json").read_text())
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
ONE_SHOT = {"bucket", "migrate", "import"}


def test_every_tier_and_its_infrastructure_is_a_service() -> None:
    assert set(TIERS) | ONE_SHOT | {"postgres", "rabbitmq", "minio", "prometheus"} <= set(SERVICES)
    assert {"store", "inference", "optimizer", "monitor", "migrate", "import"} <= set(LLMK)


@pytest.mark.parametrize("name", sorted(LLMK))
def test_each_entry_point_is_a_real_llmk_command(name: str) -> None:
    check_llmk_command(LLMK[name]["command"])


def test_the_image_entry_point_is_llmk() -> None:
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["llmk"]' in dockerfile
    assert "make proto" in dockerfile
    assert 'pip install ".[s3${EXTRAS:+,$EXTRAS}]"' in dockerfile, "every image reads objects from a bucket"
    assert re.search(r"^USER 10001", dockerfile, re.M), "the image runs as a non-root user"
    check_llmk_command(json.loads(re.search(r"^CMD (.*)$", dockerfile, re.M).group(1)))  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(LLMK))
def test_every_variable_a_container_sets_is_a_setting(name: str) -> None:
    env = LLMK[name].get("environment", {})
    unknown = sorted(set(env) - settings_variables() - AWS_VARIABLES)
    assert not unknown, f"{name} sets {unknown}, which llmk.config.Settings does not read (nor boto3)"


def test_the_allowed_aws_variables_are_ones_boto3_reads() -> None:
    """The allow-list names real credential variables, not a hole for anything starting with AWS_."""
    import botocore.session
    from botocore.credentials import EnvProvider

    region = botocore.session.Session().session_var_map["region"][1]
    assert {EnvProvider.ACCESS_KEY, EnvProvider.SECRET_KEY, region} == AWS_VARIABLES


def test_dependencies_wait_for_health_not_just_start() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        if name == "prometheus":
            continue
        assert isinstance(depends, dict), f"{name}: a depends_on list drops the health conditions"
        for target, rule in depends.items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            assert rule["condition"] in CONDITIONS
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {target}"
    assert SERVICES["store"]["depends_on"]["import"]["condition"] == "service_completed_successfully"
    assert SERVICES["import"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["store", "inference", "optimizer", "monitor", "inference-gpu"])
def test_long_running_services_have_an_llmk_health_check(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "llmk", "health"], test
    assert SERVICES[name]["restart"] == "unless-stopped"


def test_the_inference_worker_consumes_the_queue_and_serves_a_model_the_import_job_creates() -> None:
    env = SERVICES["inference"]["environment"]
    assert env["LLMK_INFERENCE_WORKER"] == "true"
    model = env["LLMK_SERVE_MODEL"].split("@")[0]
    command = SERVICES["import"]["command"]
    assert command[:2] == ["store", "import"]
    assert command[command.index("--model") + 1] == model
    assert "--if-missing" in command, "the import job runs on every `up`"
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]


def test_gpu_profile_reserves_a_gpu_for_a_cuda_inference_worker() -> None:
    gpu = SERVICES["inference-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["LLMK_DEVICE"] == "cuda"
    assert gpu["build"]["args"]["ACCELERATOR"].startswith("cu")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_named_volumes_hold_the_database_and_minio_holds_the_objects() -> None:
    assert {"pgdata", "minio"} <= set(SPEC["volumes"])
    assert not {"objects", "optimizer"} & set(SPEC["volumes"]), "no tier shares a disk any more"
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert SERVICES["minio"]["volumes"] == ["minio:/data"]
    assert SERVICES["minio"]["command"][:2] == ["server", "/data"]
    for name, service in LLMK.items():
        assert not any("objects" in v for v in service.get("volumes", [])), name
        env = service["environment"]
        assert not {"LLMK_OBJECT_DIR", "LLMK_STORE_OBJECT_DIR", "LLMK_OPTIMIZER_STATE_DIR"} & set(env), name
        assert "volumes" not in service, f"{name}: objects and optimizer state are in the bucket"


@pytest.mark.parametrize("name", sorted(LLMK))
def test_every_llmk_service_reads_objects_from_the_minio_bucket_with_its_credentials(name: str) -> None:
    from services.store.adapters.s3_bucket import Location

    env = LLMK[name]["environment"]
    where = Location.parse(env["LLMK_OBJECTS_URL"])  # an s3:// URL, or this raises
    endpoint = urlparse(env["LLMK_S3_ENDPOINT"])
    assert (endpoint.hostname, endpoint.port) == ("minio", 9000), env["LLMK_S3_ENDPOINT"]
    minio = SERVICES["minio"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert env["AWS_DEFAULT_REGION"]
    script = " ".join(SERVICES["bucket"]["command"])
    assert f"mc mb --ignore-existing llmk/{where.bucket}" in script, "nothing creates the bucket"
    assert "http://minio:9000" in script


def test_minio_has_its_own_health_check_and_the_bucket_step_waits_for_it() -> None:
    minio = SERVICES["minio"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert minio["image"].startswith("minio/minio:RELEASE.")
    bucket = SERVICES["bucket"]
    assert bucket["image"].startswith("minio/mc:RELEASE.")
    assert bucket["restart"] == "no"
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert bucket["environment"] == minio["environment"]
    assert len(bucket["environment"]["MINIO_ROOT_PASSWORD"].split(":-")[-1].rstrip("}")) >= 8  # MinIO's rule
    for name in ("migrate", "import", "store", "optimizer"):
        assert SERVICES[name]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_the_metrics_port_of_every_serving_tier() -> None:
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    for name in ("store", "inference", "inference-gpu", "optimizer"):
        port = SERVICES[name]["environment"]["LLMK_METRICS_PORT"]
        assert f"{name}:{port}" in targets


def test_rabbitmq_loads_durable_quorum_queues_with_a_delivery_limit_and_dead_letters() -> None:
    from llmk.config import Settings
    from llmk.platform.version_events import EXCHANGE

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    queues = {q["name"]: q for q in DEFINITIONS["queues"]}
    exchanges = {e["name"]: e for e in DEFINITIONS["exchanges"]}
    for name in (defaults.inference_queue, defaults.optimizer_queue):
        queue = queues[name]
        assert queue["durable"]
        assert queue["arguments"] == {"x-queue-type": "quorum"}
        policy = next(p for p in DEFINITIONS["policies"] if re.fullmatch(p["pattern"], name))
        assert policy["definition"]["delivery-limit"] > 0
        dead = policy["definition"]["dead-letter-exchange"]
        key = policy["definition"]["dead-letter-routing-key"]
        bindings = DEFINITIONS["bindings"]
        bound = [b["destination"] for b in bindings if b["source"] == dead and b["routing_key"] == key]
        assert bound, f"{name}: dead letters go nowhere"
        assert all(queues[q]["durable"] for q in bound), f"{name}: dead letters go to a transient queue"
    events = exchanges[EXCHANGE.name]
    assert events["type"] == EXCHANGE.type
    assert events["durable"] == EXCHANGE.durable
    assert SERVICES["rabbitmq"]["volumes"][1].startswith("./infra/rabbitmq/definitions.json:")
    conf = (ROOT / "infra" / "rabbitmq" / "rabbitmq.conf").read_text()
    assert "load_definitions = /etc/rabbitmq/definitions.json" in conf
    user = DEFINITIONS["users"][0]["name"]
    assert SERVICES["store"]["environment"]["LLMK_BROKER_URL"].startswith(f"amqp://{user}:")
    assert all(s["environment"]["LLMK_QUEUE_TYPE"] == "quorum" for s in LLMK.values())


def test_the_build_context_keeps_what_the_image_needs() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "README.md", "Makefile", "proto/", "shared/", "services/"):
        assert f"!{needed}" in ignore


def test_the_gateway_is_a_service_over_the_inference_and_optimizer_services() -> None:
    api = SERVICES["api"]
    assert api["command"][:2] == ["serve", "api"]
    assert api["environment"]["LLMK_INFERENCE_ADDRESS"] == "inference:50051"  # workers scale apart
    assert api["environment"]["LLMK_OPTIMIZER_ADDRESS"] == "optimizer:50051"  # feedback trains there
    assert "8000:8000" in api["ports"]
    assert "http://127.0.0.1:8000/health" in " ".join(api["healthcheck"]["test"])
    assert set(api["depends_on"]) == {"inference", "optimizer"}
