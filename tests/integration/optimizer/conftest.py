"""The real servers for the optimizer's integration tests: a fresh PostgreSQL database per test (dropped
afterwards) and RabbitMQ. In CI (CI set) a missing server fails the test; elsewhere it is skipped with how
to turn it on."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import OperationalError

POSTGRES = os.environ.get("LLMK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP = os.environ.get("LLMK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def unavailable(what: str, how: str) -> None:
    message = f"{what} is not reachable; {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    try:
        conn = admin.connect()
    except OperationalError:
        unavailable(
            f"PostgreSQL at {POSTGRES}",
            "start it (pg_ctlcluster --skip-systemctl-redirect 15 main start) or set LLMK_TEST_POSTGRES_URL",
        )
    name = f"llmk_optimizer_{uuid.uuid4().hex[:12]}"
    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
        admin.dispose()


@pytest.fixture
def amqp_url() -> str:
    try:
        with Connection(AMQP, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception:
        unavailable(f"RabbitMQ at {AMQP}", "start it (rabbitmq-server -detached) or set LLMK_TEST_AMQP_URL")
    return AMQP
