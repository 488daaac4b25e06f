"""A shards location: a local directory or an object-store prefix `s3://bucket/prefix`, read (and
written) through one set of functions.

Every command that takes a shards folder takes either. Local paths are read with plain file calls;
`s3://` objects with boto3, whose client takes the endpoint, region and credentials from the standard
AWS environment and config files alone (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`,
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `~/.aws/config`, …) — the same ones the `aws` command
and DALI's S3 reader use. Nothing here is specific to one store: AWS S3, MinIO, Ceph, SeaweedFS and
GCS's S3 interface all answer these calls.

Faults become one `StoreError` line naming the object (missing credentials, credentials refused, an
endpoint that does not answer, a missing bucket or object). Reads that fail on the way (the store
stopped, a connection reset, a 5xx answer) are retried with backoff for `retry_seconds` (the loaders
pass `data.read_retry_seconds`) before they stop with a `StoreError` saying for how long the store did
not answer; `open_stream` resumes a broken download at the byte it had reached, from the same object
version (its ETag).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SCHEME = "s3://"
T = TypeVar("T")


class ShardsDirError(RuntimeError):
    """A shards directory, its manifest, or a shard or index it lists, that cannot be used; the message
    names the file (or object)."""


class StoreError(ShardsDirError):
    """An object store that refuses or cannot be reached, or an object it does not hold; one line
    naming the object."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # kept whole: webdataset appends to the `args` of errors it passes on


class NoSuchObject(StoreError):
    """The bucket exists but the object does not."""


def is_remote(location: str | Path) -> bool:
    """Whether `location` is an object-store URL (`s3://…`) rather than a local path."""
    return str(location).startswith(SCHEME)


def join(location: str | Path, name: str) -> str | Path:
    """`name` inside the shards location: `s3://b/p` + `x.tar` → `s3://b/p/x.tar`; a local dir → a Path."""
    if is_remote(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location) / name


def base_name(path: str | Path) -> str:
    """The last segment of a local path or URL: the shard's file name."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ObjectUrl:
    """`s3://bucket/key` split into bucket and key (the key of a prefix has no trailing slash)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str | Path) -> ObjectUrl:
        text = str(url)
        if not text.startswith(SCHEME):
            raise ShardsDirError(f"{text}: not an s3:// URL")
        bucket, _, key = text[len(SCHEME) :].partition("/")
        if not bucket:
            raise ShardsDirError(f"{text}: no bucket name (expected s3://bucket/prefix)")
        return cls(bucket, key.strip("/"))

    def child(self, name: str) -> ObjectUrl:
        return ObjectUrl(self.bucket, f"{self.key}/{name}" if self.key else name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"


# --------------------------------------------------------------------------------------------------
# The client and its errors

_clients: dict[int, Any] = {}


def client():
    """This process's boto3 S3 client (one per process: DataLoader workers make their own)."""
    pid = os.getpid()
    if pid not in _clients:
        import boto3

        _clients.clear()
        _clients[pid] = boto3.session.Session().client("s3")
    return _clients[pid]


def endpoint() -> str:
    """The endpoint the client talks to (from AWS_ENDPOINT_URL or the config files, else AWS's)."""
    try:
        return str(client().meta.endpoint_url)
    except Exception:  # a client that cannot be made is reported by the call that needs it
        return "the default AWS endpoint"


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _cause(exc: BaseException) -> BaseException:
    """The botocore error behind boto3's transfer errors (S3UploadFailedError wraps a ClientError)."""
    from boto3.exceptions import S3UploadFailedError

    return exc.__context__ if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None else exc


def transient(exc: BaseException) -> bool:
    """Whether `exc` may pass when the store is back: no answer, a broken connection, a 5xx."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError

    exc = _cause(exc)
    if isinstance(exc, ClientError):
        return _status(exc) >= 500 or _error_code(exc) in {"SlowDown", "ServiceUnavailable", "InternalError"}
    kinds = (ConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError, HTTPError, OSError)
    return isinstance(exc, kinds)


def describe(exc: BaseException, url: str | Path | ObjectUrl) -> StoreError:
    """One line for a failed call on `url`: what went wrong and which setting to check."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, PartialCredentialsError

    if isinstance(exc, StoreError):
        return exc
    exc = _cause(exc)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StoreError(
            f"{url}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(exc, NoRegionError):
        return StoreError(f"{url}: no AWS region configured (set AWS_REGION)")
    code = _error_code(exc)
    if isinstance(exc, ClientError):
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"}:
            return StoreError(
                f"{url}: the object store at {endpoint()} refused the credentials ({code}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        if code == "NoSuchBucket":
            bucket = ObjectUrl.parse(str(url)).bucket
            return StoreError(f"{url}: no bucket {bucket!r} at {endpoint()} (check the URL and AWS_ENDPOINT_URL)")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return NoSuchObject(f"{url}: no such object")
        return StoreError(f"{url}: the object store at {endpoint()} answered {code or _status(exc)}")
    if transient(exc):
        return StoreError(
            f"{url}: cannot reach the object store at {endpoint()} (check AWS_ENDPOINT_URL): {first_line(exc)}"
        )
    return StoreError(f"{url}: {type(exc).__name__}: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def retrying(url: str | Path | ObjectUrl, call: Callable[[], T], retry_seconds: float = 0.0) -> T:
    """`call()`, retried with exponential backoff (0.2 s doubling to 8 s, jittered) while it fails
    transiently, for `retry_seconds` in all; then, or at once for any other failure, a `StoreError`."""
    deadline, pause = time.monotonic() + retry_seconds, 0.2
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or time.monotonic() >= deadline:
                error = describe(exc, url)
                if transient(exc) and retry_seconds > 0:
                    error = StoreError(f"{error} — still failing after {retry_seconds:g} s of retries")
                raise error from None
        time.sleep(min(pause * random.uniform(0.8, 1.2), max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 8.0)


# --------------------------------------------------------------------------------------------------
# Reading


def read_bytes(path: str | Path, retry_seconds: float = 0.0) -> bytes:
    """The whole file or object at `path`; FileNotFoundError locally, StoreError for an object."""
    if not is_remote(path):
        return Path(path).read_bytes()
    url = ObjectUrl.parse(path)
    return retrying(path, lambda: client().get_object(Bucket=url.bucket, Key=url.key)["Body"].read(), retry_seconds)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a local file (the digest the manifest records for each shard)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def read_range(path: str | Path, offset: int, size: int, retry_seconds: float = 0.0) -> bytes:
    """`size` bytes of the file or object at `path` from `offset` (fewer at its end)."""
    if not is_remote(path):
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(size)
    if size <= 0:
        return b""
    url = ObjectUrl.parse(path)
    ranged = f"bytes={offset}-{offset + size - 1}"
    return retrying(
        path, lambda: client().get_object(Bucket=url.bucket, Key=url.key, Range=ranged)["Body"].read(), retry_seconds
    )


def list_sizes(location: str | Path, retry_seconds: float = 0.0) -> dict[str, int]:
    """File name → size in bytes of every file directly inside the location (one listing for a prefix).

    StoreError when the bucket is missing or the store cannot be reached; an empty dict for an empty
    (or absent) prefix or a missing local directory."""
    if not is_remote(location):
        folder = Path(location)
        return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    url = ObjectUrl.parse(location)
    prefix = f"{url.key}/" if url.key else ""

    def listing() -> dict[str, int]:
        sizes = {}
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", ()):
                sizes[item["Key"][len(prefix) :]] = int(item["Size"])
        return sizes

    return retrying(location, listing, retry_seconds)


def head(path: str | Path, retry_seconds: float = 0.0) -> tuple[int, dict[str, str]] | None:
    """(size, user metadata) of an object, or None when it does not exist (the bucket must)."""
    from botocore.exceptions import ClientError

    url = ObjectUrl.parse(path)

    def call():
        try:
            answer = client().head_object(Bucket=url.bucket, Key=url.key)
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(answer["ContentLength"]), dict(answer.get("Metadata") or {})

    return retrying(path, call, retry_seconds)


class _ObjectReader(io.RawIOBase):
    """A forward-only stream of one object that survives a store outage: a read that fails is
    retried from the byte it reached (`Range`), of the same object version (`IfMatch` its ETag),
    for `retry_seconds` in all per outage."""

    def __init__(self, url: ObjectUrl, retry_seconds: float) -> None:
        self.url, self.retry_seconds = url, retry_seconds
        self.position = 0
        self._etag: str | None = None
        self._body = None
        self._open()

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        def call():
            extra = {"IfMatch": self._etag} if self._etag else {}
            ranged = {"Range": f"bytes={self.position}-"} if self.position else {}
            return client().get_object(Bucket=self.url.bucket, Key=self.url.key, **extra, **ranged)

        answer = retrying(self.url, call, self.retry_seconds)
        self._etag = answer.get("ETag") or self._etag
        self._body = answer["Body"]

    def readinto(self, buffer) -> int:
        deadline = None
        while True:
            try:
                assert self._body is not None
                data = self._body.read(len(buffer))
                break
            except Exception as exc:
                if not transient(exc):
                    raise describe(exc, self.url) from None
                deadline = deadline or time.monotonic() + self.retry_seconds
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"{describe(exc, self.url)} — still failing after {self.retry_seconds:g} s of retries"
                    ) from None
                self._body = None
                self._open()  # retries by itself until the deadline of its own window
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


def open_stream(path: str | Path, retry_seconds: float = 0.0, buffer_size: int = 1 << 20):
    """A binary, forward-reading file object of the file or object at `path` (see `_ObjectReader`)."""
    if not is_remote(path):
        return open(path, "rb")
    return io.BufferedReader(_ObjectReader(ObjectUrl.parse(path), retry_seconds), buffer_size)


# --------------------------------------------------------------------------------------------------
# Writing (the shard builder)


def upload(local: Path, path: str, metadata: dict[str, str] | None = None) -> None:
    """Upload the local file to the object `path` with user `metadata` (boto3's managed transfer:
    multipart for large files, each part checksummed by the store); StoreError naming the object."""
    url = ObjectUrl.parse(path)
    extra = {"ExtraArgs": {"Metadata": metadata}} if metadata else {}
    retrying(path, lambda: client().upload_file(str(local), url.bucket, url.key, **extra))


def download(path: str, local: Path, retry_seconds: float = 0.0) -> bool:
    """Copy the object `path` to the local file `local`; False when there is no such object."""
    url = ObjectUrl.parse(path)
    try:
        retrying(path, lambda: client().download_file(url.bucket, url.key, str(local)), retry_seconds)
    except NoSuchObject:
        return False
    return True


def put_bytes(path: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
    """Write `data` as the object `path` in one request."""
    url = ObjectUrl.parse(path)
    retrying(path, lambda: client().put_object(Bucket=url.bucket, Key=url.key, Body=data, Metadata=metadata or {}))
