"""The host's SQS client for the queue splitting e2e (boto3 from moto's venv), against moto.

    sqs.py ENDPOINT create QUEUE
    sqs.py ENDPOINT send QUEUE TENANT PREFIX COUNT   # bodies PREFIX-1..COUNT, attribute tenant=TENANT
    sqs.py ENDPOINT send-json QUEUE TENANT PREFIX COUNT  # the same as {"text": "PREFIX-i"} (jq reads it)
    sqs.py ENDPOINT depth QUEUE                      # messages ready, or "absent"
    sqs.py ENDPOINT tags QUEUE                       # the queue's tags as JSON
    sqs.py ENDPOINT receive QUEUE COUNT SECONDS      # receives and deletes COUNT, prints sorted bodies

Exit 1 with a message on stderr when a receive does not get COUNT messages in time.
"""

import json
import sys
import time

import boto3
from botocore.exceptions import ClientError


def main(argv):
    endpoint, command, queue, *rest = argv[1:]
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    if command == "create":
        sqs.create_queue(QueueName=queue)
        return 0
    try:
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    except ClientError:
        if command == "depth":
            print("absent")
            return 0
        raise
    if command in ("send", "send-json"):
        tenant, prefix, count = rest[0], rest[1], int(rest[2])
        for i in range(1, count + 1):
            body = f"{prefix}-{i}"
            if command == "send-json":
                body = json.dumps({"text": body})
            sqs.send_message(QueueUrl=url, MessageBody=body,
                             MessageAttributes={"tenant": {"DataType": "String", "StringValue": tenant}})
    elif command == "depth":
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        print(attrs["Attributes"]["ApproximateNumberOfMessages"])
    elif command == "tags":
        print(json.dumps(sqs.list_queue_tags(QueueUrl=url).get("Tags", {}), sort_keys=True))
    elif command == "receive":
        count, deadline = int(rest[0]), time.monotonic() + float(rest[1])
        bodies = []
        while len(bodies) < count and time.monotonic() < deadline:
            out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in out.get("Messages", []):
                bodies.append(m["Body"])
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        print("\n".join(sorted(bodies)))
        if len(bodies) != count:
            print(f"sqs.py: got {len(bodies)} of {count} messages from {queue}", file=sys.stderr)
            return 1
    else:
        print(f"sqs.py: unknown command {command}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
