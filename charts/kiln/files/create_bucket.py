"""Create the S3 bucket when it is missing (the chart's post-install Job runs this with the operator image).

Waits up to 5 minutes for the endpoint (the bundled SeaweedFS may still be starting); exits 0 when the
bucket exists or was created, non-zero with the S3 error otherwise. Argument: the bucket name.
"""

import os
import sys
import time

from botocore.exceptions import ClientError

from kiln_contract import storage

bucket = sys.argv[1]
s3 = storage.s3_client()
deadline = time.monotonic() + 300
while True:
    try:
        s3.head_bucket(Bucket=bucket)
        print(f"bucket {bucket} exists", flush=True)
        break
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
        region = os.environ.get("AWS_REGION", "us-east-1")
        extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            s3.create_bucket(Bucket=bucket, **extra)
        except ClientError as race:
            if race.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
        print(f"bucket {bucket} created", flush=True)
        break
    except Exception as exc:  # noqa: BLE001 - the endpoint is not up yet: retry until the deadline
        if time.monotonic() > deadline:
            raise
        print(f"waiting for S3: {exc}", flush=True)
        time.sleep(3)
