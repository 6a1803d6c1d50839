"""One member of a KIP-848 consumer group (group.protocol=consumer) that commits every message
synchronously before reporting it.

Usage: confluent_consumer_protocol.py BOOTSTRAP TOPIC GROUP
Prints JSON lines: {"assigned": [...]} whenever its assignment changes, {"v": N} for each message
once its offset is committed, {"error": "..."} for errors. SIGTERM leaves the group and exits.
"""
import json
import signal
import sys

from confluent_kafka import Consumer, KafkaException

bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
assigned = set()
stop = False


def say(obj):
    print(json.dumps(obj), flush=True)


def on_assign(consumer, parts):
    assigned.update(p.partition for p in parts)
    say({"assigned": sorted(assigned)})


def on_revoke(consumer, parts):
    assigned.difference_update(p.partition for p in parts)
    say({"assigned": sorted(assigned)})


def on_term(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "group.protocol": "consumer",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
while not stop:
    msg = c.poll(0.1)
    if msg is None:
        continue
    if msg.error():
        say({"error": str(msg.error())})
        continue
    try:
        c.commit(message=msg, asynchronous=False)
    except KafkaException as e:
        say({"error": "commit: " + str(e)})
        continue
    say({"v": int(msg.value())})
c.close()
say({"closed": True})
