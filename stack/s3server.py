"""moto's S3 server, with signatures checked: `python -m stack.s3server -H host -p port`.

moto accepts any key unless IAM authentication is on, so a client with wrong
credentials would work against the stack and fail against real S3. This
starts moto's own server with authentication from the first request, and one
IAM user holding the stack's test key (stack.services.AWS_KEY) with an s3:*
policy: a wrong key is refused with InvalidAccessKeyId, a wrong secret with
SignatureDoesNotMatch, as S3 does.
"""

from __future__ import annotations

import json
import os
import sys

from stack.services import AWS_KEY, AWS_REGION, AWS_SECRET

USER = "distillery"
S3_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def main(argv: list[str]) -> None:
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # read when moto's settings are first imported
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.server import main as moto_main

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(region_name=AWS_REGION, user_name=USER, path="/")
    iam.put_user_policy(USER, "s3", json.dumps(S3_ONLY))
    key = iam.create_access_key(USER)
    # moto draws random keys; the stack's are fixed so .stack.env and .dvc/config.local stay valid across restarts
    key.access_key_id, key.secret_access_key = AWS_KEY, AWS_SECRET
    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
