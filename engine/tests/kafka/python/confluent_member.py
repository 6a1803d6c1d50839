"""One consumer-group member that prints its assignment whenever it changes.

Usage: confluent_member.py BOOTSTRAP TOPIC GROUP [PARTITIONS_TO_CREATE]
Each line on stdout is a JSON list of the partitions assigned now. Runs until killed.
"""
import json
import sys

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
if len(sys.argv) > 4:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=int(sys.argv[4]), replication_factor=1)]).values():
        f.result(timeout=10)

assigned = set()


def report():
    print(json.dumps(sorted(assigned)), flush=True)


def on_assign(consumer, parts):
    assigned.clear()
    assigned.update(p.partition for p in parts)
    report()


def on_revoke(consumer, parts):
    assigned.difference_update(p.partition for p in parts)
    report()


c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "partition.assignment.strategy": "range",
})
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
while True:
    c.poll(0.2)
