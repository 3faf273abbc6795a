#!/usr/bin/env python3
"""Create the platform's buckets, policies and users in MinIO, idempotently.

Reads a JSON spec on stdin (the admin and service keys included, so the
calling task has no_log), talks to MinIO's admin API through MinIO's Python
SDK (the archived `mc` client is not needed), and prints one JSON line:
{"changed": bool, "actions": [...]} with no secret in it.

Spec: {"endpoint": "127.0.0.1:9000", "admin": {"access_key", "secret_key"},
       "buckets": {purpose: name},
       "grants": {identity: {"read_write": [purpose], "read": [purpose], "write": [purpose]}},
       "credentials": {identity: {"access_key", "secret_key"}},
       "scientists": {person: [access_key, secret_key]}}
A scientist (mlops_people) reads the DVC bucket and writes its scratch/<person>/
prefix; one who is no longer listed loses the account.
"""

import json
import sys

from minio import Minio, MinioAdmin
from minio.credentials import StaticProvider
from minio.error import MinioAdminException, S3Error


def policy_for(grant: dict, buckets: dict) -> dict:
    """Least privilege: list and read the granted buckets, write only the read_write ones,
    and only put objects into the write-only ones."""
    write = sorted(buckets[p] for p in grant.get("read_write", []))
    read = sorted(set(write) | {buckets[p] for p in grant.get("read", [])})
    put_only = sorted(buckets[p] for p in grant.get("write", []))
    statements = []
    if read:
        statements += [
            {
                "Effect": "Allow",
                "Action": [
                    "s3:GetBucketLocation",
                    "s3:ListBucket",
                    "s3:ListBucketMultipartUploads",
                ],
                "Resource": [f"arn:aws:s3:::{b}" for b in read],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectTagging"],
                "Resource": [f"arn:aws:s3:::{b}/*" for b in read],
            },
        ]
    if put_only:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{b}/*" for b in put_only],
            }
        )
    if write:
        statements.append(
            {
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:PutObjectTagging",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": [f"arn:aws:s3:::{b}/*" for b in write],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def scientist_policy(bucket: str, person: str) -> dict:
    """Read and list the DVC bucket; write only under scratch/<person>/."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/scratch/{person}/*"],
            },
        ],
    }


def normalized(policy: dict | None) -> set | None:
    """A policy as MinIO may echo it back (reordered, strings for one-item lists) compares equal."""
    if not policy:
        return None

    def as_set(value) -> frozenset:
        return frozenset([value] if isinstance(value, str) else value)

    return {
        (s.get("Effect"), as_set(s.get("Action", [])), as_set(s.get("Resource", [])))
        for s in policy.get("Statement", [])
    }


def keys_work(endpoint: str, keys: dict, bucket: str) -> bool:
    """True when MinIO accepts the user's wanted secret (a denial by policy still proves it)."""
    client = Minio(
        endpoint, access_key=keys["access_key"], secret_key=keys["secret_key"], secure=False
    )
    try:
        client.bucket_exists(bucket)
    except S3Error as error:
        return error.code not in {"SignatureDoesNotMatch", "InvalidAccessKeyId"}
    return True


def main() -> int:
    spec = json.load(sys.stdin)
    endpoint = spec["endpoint"]
    admin_keys = spec["admin"]
    s3 = Minio(
        endpoint,
        access_key=admin_keys["access_key"],
        secret_key=admin_keys["secret_key"],
        secure=False,
    )
    admin = MinioAdmin(
        endpoint=endpoint,
        credentials=StaticProvider(admin_keys["access_key"], admin_keys["secret_key"]),
        secure=False,
    )
    actions = []

    for bucket in sorted(spec["buckets"].values()):
        if not s3.bucket_exists(bucket):
            s3.make_bucket(bucket)
            actions.append(f"created bucket {bucket}")

    for identity, grant in sorted(spec["grants"].items()):
        name = f"mlops-{identity}"
        wanted = policy_for(grant, spec["buckets"])
        try:
            current = json.loads(admin.policy_info(name))
            current = current.get("Policy", current)
        except MinioAdminException:  # an unknown policy
            current = None
        if normalized(current) != normalized(wanted):
            admin.policy_add(name, policy=wanted)
            actions.append(f"wrote policy {name}")

        keys = spec["credentials"][identity]
        granted = grant.get("read_write", []) + grant.get("read", []) + grant.get("write", [])
        first_bucket = spec["buckets"][granted[0]]
        try:
            info = json.loads(admin.user_info(keys["access_key"]))
        except MinioAdminException:  # an unknown user
            info = None
        if info is None or not keys_work(endpoint, keys, first_bucket):
            admin.user_add(keys["access_key"], keys["secret_key"])
            actions.append(f"set user {identity}")
            info = json.loads(admin.user_info(keys["access_key"]))
        attached = {p for p in (info.get("policyName") or "").split(",") if p}
        if attached != {name}:
            if attached - {name}:
                admin.detach_policy(sorted(attached - {name}), user=keys["access_key"])
            if name not in attached:
                admin.attach_policy([name], user=keys["access_key"])
            actions.append(f"attached {name} to {identity}")

    dvc = spec["buckets"]["dvc"]
    for person, (access_key, secret_key) in sorted(spec.get("scientists", {}).items()):
        name = f"mlops-person-{person}"
        wanted = scientist_policy(dvc, person)
        try:
            current = json.loads(admin.policy_info(name))
            current = current.get("Policy", current)
        except MinioAdminException:
            current = None
        if normalized(current) != normalized(wanted):
            admin.policy_add(name, policy=wanted)
            actions.append(f"wrote policy {name}")
        keys = {"access_key": access_key, "secret_key": secret_key}
        try:
            json.loads(admin.user_info(access_key))
            present = keys_work(endpoint, keys, dvc)
        except MinioAdminException:
            present = False
        if not present:
            admin.user_add(access_key, secret_key)
            admin.attach_policy([name], user=access_key)
            actions.append(f"set user of {person}")
    listed = {f"mlops-person-{person}" for person in spec.get("scientists", {})}
    for user_key, info in json.loads(admin.user_list()).items():
        policies = {p for p in (info.get("policyName") or "").split(",") if p}
        stale = {p for p in policies if p.startswith("mlops-person-")} - listed
        if stale:
            admin.user_remove(user_key)
            actions.append(f"removed the user of {', '.join(sorted(stale))}")

    print(json.dumps({"changed": bool(actions), "actions": actions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
