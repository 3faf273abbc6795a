"""Uploads: the original bytes, content-addressed in the uploads bucket."""

from __future__ import annotations

import hashlib

import boto3
from botocore.config import Config as BotoConfig

from . import uploads


class UploadStore:
    def __init__(self, endpoint: str, bucket: str):
        self.bucket = bucket
        # A session of its own: boto3's default session keeps the first credentials it
        # found for the life of the process, whatever the environment says later.
        self.s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            config=BotoConfig(
                retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32
            ),
        )

    def put(self, data: bytes, extension: str, content_type: str) -> tuple[str, str]:
        """Store the original; return (sha256, key). The same bytes always get the same key."""
        sha = hashlib.sha256(data).hexdigest()
        key = uploads.object_key(sha, extension)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return sha, key
