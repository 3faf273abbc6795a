"""Check the object store contract from outside the server host.

Both object store backends (MinIO, SeaweedFS) must behave the same for the
platform's clients: each service identity may read and write its buckets,
only read the buckets it reads, only put into the buckets it writes (the web
app's uploads: it never reads them back), and is denied everywhere else;
anonymous requests are denied; the S3 features MLflow, DVC and boto3 use work.
Seeds and markers are written and read with the admin keys. The
molecule scenarios of both roles run this script in their verify step.

Usage (the spec, with the keys, comes on stdin as JSON):
    python s3_contract.py check          the whole contract
    python s3_contract.py write-markers  put a marker object in every bucket
    python s3_contract.py read-markers   the markers are still there

Spec: {"endpoint": ..., "region": ..., "buckets": {purpose: name},
       "grants": {identity: {"read_write": [...], "read": [...], "write": [...]}},
       "credentials": {identity: {"access_key": ..., "secret_key": ...}},
       "admin": {"access_key": ..., "secret_key": ...},
       "state_file": path for the markers}
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid

import boto3
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

DENIED = {"AccessDenied", "403", "Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId"}
MULTIPART_SIZE = 20 * 1024 * 1024
ADMIN = "admin"
PART_SIZE = 5 * 1024 * 1024


class Contract:
    def __init__(self, spec: dict):
        self.spec = spec
        self.failures: list[str] = []
        self.passed = 0

    def client(self, identity: str | None):
        options = {"region_name": self.spec["region"], "endpoint_url": self.spec["endpoint"]}
        config = Config(retries={"max_attempts": 2}, s3={"addressing_style": "path"})
        if identity is None:
            return boto3.client(
                "s3", config=config.merge(Config(signature_version=UNSIGNED)), **options
            )
        keys = self.spec["admin"] if identity == ADMIN else self.spec["credentials"][identity]
        return boto3.client(
            "s3",
            aws_access_key_id=keys["access_key"],
            aws_secret_access_key=keys["secret_key"],
            config=config,
            **options,
        )

    def expect(self, label: str, allowed: bool, action, **kwargs) -> object:
        """Call action(**kwargs); record a failure unless allowed or denied as expected."""
        try:
            result = action(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            denied = code in DENIED or status == "403"
            if allowed or not denied:
                self.failures.append(
                    f"{label}: expected {'success' if allowed else 'denial'}, got {code} ({status})"
                )
            else:
                self.passed += 1
            return None
        if allowed:
            self.passed += 1
        else:
            self.failures.append(f"{label}: expected denial, but it succeeded")
        return result

    def access_matrix(self) -> None:
        buckets = self.spec["buckets"]
        grants = self.spec["grants"]
        admin = self.client(ADMIN)
        # Seed one object per bucket for the read checks.
        seeded = {}
        for purpose, bucket in buckets.items():
            key = f"contract/seed-{uuid.uuid4().hex}.txt"
            self.expect(
                f"admin seeds {bucket}",
                True,
                admin.put_object,
                Bucket=bucket,
                Key=key,
                Body=b"seed",
            )
            seeded[purpose] = key
        for identity, grant in grants.items():
            client = self.client(identity)
            for purpose, bucket in buckets.items():
                may_change = purpose in grant.get("read_write", [])
                may_put = may_change or purpose in grant.get("write", [])
                may_read = may_change or purpose in grant.get("read", [])
                label = f"{identity} on {bucket}"
                key = f"contract/{identity}-{uuid.uuid4().hex}.txt"
                self.expect(
                    f"{label}: put", may_put, client.put_object, Bucket=bucket, Key=key, Body=b"x"
                )
                self.expect(
                    f"{label}: list",
                    may_read,
                    client.list_objects_v2,
                    Bucket=bucket,
                    Prefix="contract/",
                )
                got = self.expect(
                    f"{label}: get", may_read, client.get_object, Bucket=bucket, Key=seeded[purpose]
                )
                if got is not None and got["Body"].read() != b"seed":
                    self.failures.append(f"{label}: get returned other content")
                if may_change:
                    self.expect(
                        f"{label}: delete", True, client.delete_object, Bucket=bucket, Key=key
                    )
                elif may_put:
                    admin.delete_object(Bucket=bucket, Key=key)
        anonymous = self.client(None)
        for purpose, bucket in buckets.items():
            self.expect(f"anonymous list {bucket}", False, anonymous.list_objects_v2, Bucket=bucket)
            self.expect(
                f"anonymous put {bucket}",
                False,
                anonymous.put_object,
                Bucket=bucket,
                Key="anon",
                Body=b"x",
            )
            self.expect(
                f"anonymous get {bucket}",
                False,
                anonymous.get_object,
                Bucket=bucket,
                Key=seeded[purpose],
            )
        self.expect("anonymous list buckets", False, anonymous.list_buckets)
        for purpose, key in seeded.items():
            admin.delete_object(Bucket=buckets[purpose], Key=key)

    def s3_features(self) -> dict:
        """Multipart upload, prefix listing and delete, as MLflow, DVC and boto3 use them."""
        identity, purpose = next(
            (i, g["read_write"][0]) for i, g in self.spec["grants"].items() if g.get("read_write")
        )
        bucket = self.spec["buckets"][purpose]
        client = self.client(identity)
        run = uuid.uuid4().hex[:8]
        payload = os.urandom(MULTIPART_SIZE)
        path = f"/tmp/s3-contract-{run}.bin"  # noqa: S108 (a scratch file of this run)
        with open(path, "wb") as handle:
            handle.write(payload)
        transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)
        started = time.monotonic()
        client.upload_file(path, bucket, f"features/{run}/big/blob.bin", Config=transfer)
        upload_seconds = time.monotonic() - started
        head = client.head_object(Bucket=bucket, Key=f"features/{run}/big/blob.bin")
        if head["ContentLength"] != MULTIPART_SIZE:
            self.failures.append(f"multipart object has {head['ContentLength']} bytes")
        if "-" not in head["ETag"]:
            self.failures.append(f"upload was not multipart (ETag {head['ETag']})")
        started = time.monotonic()
        client.download_file(
            bucket, f"features/{run}/big/blob.bin", path + ".back", Config=transfer
        )
        download_seconds = time.monotonic() - started
        with open(path + ".back", "rb") as handle:
            if hashlib.sha256(handle.read()).digest() != hashlib.sha256(payload).digest():
                self.failures.append("multipart object came back different")
        for name in ("a/1.txt", "a/2.txt", "b/1.txt", "top.txt"):
            client.put_object(Bucket=bucket, Key=f"features/{run}/tree/{name}", Body=name.encode())
        listing = client.list_objects_v2(
            Bucket=bucket, Prefix=f"features/{run}/tree/", Delimiter="/"
        )
        prefixes = sorted(p["Prefix"] for p in listing.get("CommonPrefixes", []))
        keys = [o["Key"] for o in listing.get("Contents", [])]
        if prefixes != [f"features/{run}/tree/a/", f"features/{run}/tree/b/"]:
            self.failures.append(f"prefix listing gave common prefixes {prefixes}")
        if keys != [f"features/{run}/tree/top.txt"]:
            self.failures.append(f"prefix listing gave keys {keys}")
        everything = client.list_objects_v2(Bucket=bucket, Prefix=f"features/{run}/")
        client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": o["Key"]} for o in everything.get("Contents", [])]},
        )
        left = client.list_objects_v2(Bucket=bucket, Prefix=f"features/{run}/").get("KeyCount", 0)
        if left:
            self.failures.append(f"{left} objects left after delete")
        for leftover in (path, path + ".back"):
            os.remove(leftover)
        self.passed += 1
        return {
            "multipart_mb": MULTIPART_SIZE // (1024 * 1024),
            "upload_s": round(upload_seconds, 2),
            "download_s": round(download_seconds, 2),
        }

    def write_markers(self) -> None:
        markers = {}
        for bucket in self.spec["buckets"].values():
            nonce = uuid.uuid4().hex
            self.client(ADMIN).put_object(
                Bucket=bucket, Key="persist/marker.txt", Body=nonce.encode()
            )
            markers[bucket] = nonce
        with open(self.spec["state_file"], "w") as handle:
            json.dump(markers, handle)
        self.passed += len(markers)

    def read_markers(self) -> None:
        with open(self.spec["state_file"]) as handle:
            markers = json.load(handle)
        for bucket, nonce in markers.items():
            got = self.expect(
                f"marker in {bucket}",
                True,
                self.client(ADMIN).get_object,
                Bucket=bucket,
                Key="persist/marker.txt",
            )
            if got is not None and got["Body"].read().decode() != nonce:
                self.failures.append(f"marker in {bucket} changed")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    contract = Contract(json.load(sys.stdin))
    report: dict = {"command": command}
    if command == "check":
        contract.access_matrix()
        report.update(contract.s3_features())
    elif command == "write-markers":
        contract.write_markers()
    elif command == "read-markers":
        contract.read_markers()
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    report.update(passed=contract.passed, failed=len(contract.failures), failures=contract.failures)
    print(json.dumps(report))
    return 1 if contract.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
