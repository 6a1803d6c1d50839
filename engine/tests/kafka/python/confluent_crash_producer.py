"""An idempotent confluent-kafka producer that keeps going while its server is killed.

Usage: confluent_crash_producer.py BOOTSTRAP TOPIC FIRST COUNT
Sends values "v<n>" for n in FIRST..FIRST+COUNT, keyed by n (so spread over the topic's
partitions), with acks=all and enable.idempotence, retrying through a server restart. Prints
"started" once connected and sending, then one JSON object: every acknowledged (value,
partition, offset), and the errors of the rest.
"""
import json
import sys

from confluent_kafka import Producer

bootstrap, topic, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
producer = Producer({
    "bootstrap.servers": bootstrap,
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 2,
    "message.timeout.ms": 20000,
    "reconnect.backoff.ms": 20,
    "reconnect.backoff.max.ms": 200,
    "retry.backoff.ms": 20,
})
acked, errors = [], []


def delivered(err, msg):
    if err is None:
        acked.append([msg.value().decode(), msg.partition(), msg.offset()])
    else:
        errors.append(err.name())


import time

# The test kills the server at a random moment after this line: pace the sends so that the
# kill lands while records are in flight (300 records over about 600 ms).
print("started", flush=True)
for n in range(first, first + count):
    producer.produce(topic, key=str(n).encode(), value=("v%d" % n).encode(), on_delivery=delivered)
    if n % 10 == 0:
        producer.poll(0)
        time.sleep(0.02)
producer.flush(60)
print(json.dumps({"acked": acked, "errors": errors}))
