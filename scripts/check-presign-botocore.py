#!/usr/bin/env python3
"""Presigned S3 URLs as the official AWS SDK for Python (botocore) signs them, for the cases
given as JSON on stdin; prints their URLs as JSON on stdout. tests/cloud/glamp_store.rs compares
them with the operator's, byte for byte: SigV4 is deterministic for the same credentials, time,
bucket, key and expiry.

Each case: {"endpoint", "bucket", "region", "key", "method": "get_object" | "head_object",
"expires", "time" (RFC 3339, UTC), "path_style", "access_key_id", "secret_access_key"}.
"""

import datetime
import json
import sys
from unittest import mock

import botocore.auth
import botocore.session
from botocore.config import Config


def presign(case):
    when = datetime.datetime.strptime(case["time"], "%Y-%m-%dT%H:%M:%SZ")
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        region_name=case["region"],
        endpoint_url=case["endpoint"],
        aws_access_key_id=case["access_key_id"],
        aws_secret_access_key=case["secret_access_key"],
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if case["path_style"] else "virtual"},
        ),
    )
    # The signer reads the clock once per URL: the case's time instead.
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        return client.generate_presigned_url(
            case["method"],
            Params={"Bucket": case["bucket"], "Key": case["key"]},
            ExpiresIn=case["expires"],
        )


def main():
    cases = json.load(sys.stdin)
    json.dump([presign(case) for case in cases], sys.stdout)


if __name__ == "__main__":
    main()
