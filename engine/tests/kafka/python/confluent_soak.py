"""One client of the soak test: a producer, a group member, or a topic administrator.

Usage: confluent_soak.py ROLE BOOTSTRAP NAME ACKFILE
ROLE produce: an idempotent acks=all producer of values "NAME-<n>" to topic "soak", keyed by n;
  every acknowledged value is appended to ACKFILE (flushed at once), so that what a SIGKILL of
  this process leaves behind is still known.
ROLE consume: joins group "soak-readers", reads for a while, commits, leaves, joins again.
ROLE admin: creates and deletes topics "NAME-<n>" of a few partitions, over and over.
Runs until killed.
"""
import random
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

role, bootstrap, name, ackfile = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
quiet = {"log_level": 0, "logger": lambda *a: None}

if role == "produce":
    out = open(ackfile, "a", buffering=1)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "reconnect.backoff.ms": 20,
        "reconnect.backoff.max.ms": 200,
        **quiet,
    })

    def delivered(err, msg):
        if err is None:
            out.write(msg.value().decode() + "\n")

    n = 0
    while True:
        producer.produce("soak", key=str(n).encode(), value=("%s-%d" % (name, n)).encode(), on_delivery=delivered)
        n += 1
        if n % 20 == 0:
            producer.poll(0.01)
elif role == "consume":
    while True:
        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": "soak-readers",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            **quiet,
        })
        c.subscribe(["soak"])
        until = time.time() + random.uniform(1, 4)
        while time.time() < until:
            c.poll(0.2)
        c.close()
else:
    admin = AdminClient({"bootstrap.servers": bootstrap, **quiet})
    n = 0
    while True:
        topic = "%s-%d" % (name, n)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=10)
            time.sleep(0.2)
            admin.delete_topics([topic])[topic].result(timeout=10)
        except Exception:
            time.sleep(0.2)
        n += 1
