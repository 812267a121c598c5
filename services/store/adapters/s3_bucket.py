"""A bucket reached with boto3, and every S3 failure turned into one line that names the setting to fix.

`LLMK_OBJECTS_URL=s3://bucket/prefix` picks the bucket; `LLMK_S3_ENDPOINT` a MinIO-style server; region and
credentials come from the usual AWS settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
profiles), which boto3 reads when the client is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from llmk.errors import InvalidInput, LlmkError, NotFound, Unauthenticated, Unavailable

CREDENTIALS = "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
DENIED = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
BAD_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
MISSING_BUCKET = {"NoSuchBucket"}
MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
EXISTS = {"PreconditionFailed", "412"}
RACING = {"ConditionalRequestConflict", "409", "OperationAborted"}


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InvalidInput(f"LLMK_OBJECTS_URL={url!r}: expected s3://bucket/prefix")
        prefix = parsed.path.strip("/")
        return cls(parsed.netloc, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def make_client(endpoint: str, region: str, timeout: float = 10.0) -> Any:
    """A boto3 S3 client that gives up on an endpoint that does not answer within `timeout` seconds."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout,
        read_timeout=max(timeout, 60.0),
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else None,
    )
    session = boto3.session.Session()  # its own: the default session keeps the first credentials it found
    return session.client("s3", endpoint_url=endpoint or None, region_name=region or None, config=config)


def code_of(e: Exception) -> str:
    response = getattr(e, "response", None) or {}
    error = response.get("Error", {})
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def explain(e: Exception, where: Location, endpoint: str, doing: str) -> LlmkError:
    """The llmk error for a failed S3 call, naming what the user sets to fix it."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    at = endpoint or "AWS"
    if isinstance(e, NoCredentialsError):
        return Unauthenticated(
            f"no S3 credentials to {doing} {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(e, EndpointConnectionError) or not isinstance(e, ClientError):
        return Unavailable(f"S3 endpoint {at} does not answer ({type(e).__name__}): check LLMK_S3_ENDPOINT")
    code = code_of(e)
    if code in BAD_KEYS:
        return Unauthenticated(
            f"S3 at {at} refused the credentials ({code}) to {doing} {where}: {CREDENTIALS}"
        )
    if code in MISSING_BUCKET:
        return NotFound(f"bucket {where.bucket!r} does not exist at {at}: create it or fix LLMK_OBJECTS_URL")
    if code in DENIED:
        return Unauthenticated(
            f"S3 denied permission to {doing} {where} ({code}): grant it to these credentials "
            f"({CREDENTIALS}) or point LLMK_OBJECTS_URL at a bucket they may write"
        )
    return Unavailable(f"S3 at {at} failed to {doing} {where}: {code or e}")


class Bucket:
    """The S3 calls the object store makes, under one prefix, each raising an llmk error."""

    def __init__(self, where: Location, endpoint: str = "", region: str = "", client: Any = None):
        self.where, self.endpoint = where, endpoint
        self.client = client or make_client(endpoint, region)

    @contextmanager
    def calling(self, doing: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:
            raise explain(e, self.where, self.endpoint, doing) from None

    def key(self, kind: str, name: str) -> str:
        return f"{self.where.prefix}{kind}/{name}"

    def check(self, writable: bool) -> None:
        """Fail now, with the setting to fix, when the bucket cannot be reached (or written)."""
        with self.calling("list"):  # not head_bucket: a HEAD answer carries no error code to explain
            self.client.list_objects_v2(Bucket=self.where.bucket, Prefix=self.where.prefix, MaxKeys=1)
        if writable:
            probe = self.key("tmp", "write-probe")
            with self.calling("write to"):
                self.client.put_object(Bucket=self.where.bucket, Key=probe, Body=b"")
                self.client.delete_object(Bucket=self.where.bucket, Key=probe)

    def call(self, doing: str, method: str, **kwargs: Any) -> Any:
        with self.calling(doing):
            return getattr(self.client, method)(Bucket=self.where.bucket, **kwargs)

    def attempt(self, method: str, **kwargs: Any) -> tuple[str, Any]:
        """('', answer), or the error code of a refusal the caller handles (a missing key, a condition)."""
        from botocore.exceptions import ClientError

        try:
            return "", getattr(self.client, method)(Bucket=self.where.bucket, **kwargs)
        except ClientError as e:
            code = code_of(e)
            if code in MISSING_KEY | EXISTS | RACING:
                return code, None
            raise explain(e, self.where, self.endpoint, method.replace("_", " ")) from None

    def listing(self, kind: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2")
        with self.calling("list"):
            for page in pages.paginate(Bucket=self.where.bucket, Prefix=self.key(kind, "")):
                yield from page.get("Contents", [])

    def uploads(self) -> list[dict[str, Any]]:
        with self.calling("list the uploads of"):
            answer = self.client.list_multipart_uploads(Bucket=self.where.bucket, Prefix=self.where.prefix)
        return list(answer.get("Uploads", []))

    def ranged(self, key: str, start: int, end: int) -> RangedBody:
        """Bytes start..end-1 of the key as one response, read as the caller goes."""
        answer = self.call("read", "get_object", Key=key, Range=f"bytes={start}-{end - 1}")
        return RangedBody(self, answer["Body"])


class RangedBody:
    """An open ranged GET: `read(n)` gives the next n bytes (fewer only at its end), each failure an llmk
    error."""

    def __init__(self, bucket: Bucket, body: Any):
        self._bucket, self._body = bucket, body

    def read(self, n: int) -> bytes:
        with self._bucket.calling("read"):
            data: bytes = self._body.read(n)
            while 0 < len(data) < n and (more := self._body.read(n - len(data))):  # a short read mid-body
                data += more
        return data

    def close(self) -> None:
        self._body.close()
