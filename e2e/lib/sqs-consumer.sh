# shellcheck shell=sh
# The SQS e2e's consumer app: runs in the pod (busybox sh and wget from the e2e `amqp` image),
# reads the queue its env names ($MAIL_QUEUE, pointed at the output queue by admission) from the
# SQS-compatible server at $SQS_ENDPOINT (moto: the query protocol over POST, unsigned; moto routes
# by the service in the Authorization header), logs each message's body as one line and deletes it.
# Waits for its queue (the splitter creates it) instead of crashing: a restart would hide the one
# a session start must not cause.
auth='Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0'
sqs() { wget -qO- --header "$auth" --post-data "$1" "$SQS_ENDPOINT/"; }
echo "consuming $MAIL_QUEUE"
until url="$(sqs "Action=GetQueueUrl&QueueName=$MAIL_QUEUE" | sed -n 's:.*<QueueUrl>\([^<]*\)</QueueUrl>.*:\1:p')" && [ -n "$url" ]; do
  sleep 1
done
while :; do
  out="$(sqs "Action=ReceiveMessage&QueueUrl=$url&MaxNumberOfMessages=10&WaitTimeSeconds=1")" || { sleep 1; continue; }
  # One message per line, then "<receipt handle> <body>" (moto's handles are letters only).
  echo "$out" | sed 's:</Message>:&\n:g' |
    sed -n 's:.*<ReceiptHandle>\([^<]*\)</ReceiptHandle>.*<Body>\([^<]*\)</Body>.*:\1 \2:p' |
    while read -r handle body; do
      echo "$body" | sed 's/&quot;/"/g; s/&lt;/</g; s/&gt;/>/g; s/&amp;/\&/g'
      sqs "Action=DeleteMessage&QueueUrl=$url&ReceiptHandle=$handle" >/dev/null
    done
done
