"""A real S3 protocol server for the tests: moto's standalone server on a free loopback port."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault(
    "S3_UPLOAD_PART_MIN_SIZE", str(1 << 20)
)  # moto reads it on import: small parts in tests
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    port: int
    server: Any

    def client(self) -> Any:
        from services.store.adapters.s3_bucket import make_client

        return make_client(self.endpoint, "us-east-1")

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def restart(self) -> None:
        """Stop and start the server on the same port (its data is kept: moto's backends live in-process)."""
        self.server.stop()
        self.server = start(self.port)


def start(port: int) -> Any:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = S3Server(f"http://127.0.0.1:{port}", port, start(port))
    yield server
    server.server.stop()


def objects_settings(home: Path, server: S3Server, bucket: str, **overrides: object) -> dict[str, object]:
    """Settings overrides that put a store's objects in `bucket` on `server`."""
    return {"objects_url": f"s3://{bucket}/llmk", "s3_endpoint": server.endpoint, **overrides}


@dataclass
class LockedServer:
    """A moto server that checks credentials (IAM): `reader` may list and read the bucket, not write."""

    endpoint: str
    bucket: str
    reader: dict[str, str]


@pytest.fixture(scope="module")
def locked_s3() -> Iterator[LockedServer]:
    import json
    import subprocess
    import sys
    import time

    import boto3

    env = {**os.environ, **CREDENTIALS, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}  # the 4 calls below, then IAM
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        endpoint, keys = (
            f"http://127.0.0.1:{port}",
            {
                "region_name": "us-east-1",
                "aws_access_key_id": "testing",
                "aws_secret_access_key": "testing",
            },
        )
        boto3.client("s3", endpoint_url=endpoint, **keys).create_bucket(Bucket="locked")
        iam = boto3.client("iam", endpoint_url=endpoint, **keys)
        iam.create_user(UserName="reader")
        read_only = {"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}
        policy = json.dumps({"Version": "2012-10-17", "Statement": [read_only]})
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=policy)
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        reader = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        yield LockedServer(endpoint, "locked", reader)
    finally:
        server.kill()
        server.wait()
