"""confluent-kafka admin calls, printing what the server answered.

Usage: confluent_admin.py create BOOTSTRAP TOPIC PARTITIONS
Prints one JSON object: {"error": <Kafka error name or null>, "message": <text>}.
"""
import json
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

mode, bootstrap = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
if mode == "create":
    topic, partitions = sys.argv[3], int(sys.argv[4])
    result = {"error": None, "message": ""}
    try:
        for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
            f.result(timeout=30)
    except KafkaException as e:
        err = e.args[0]
        result = {"error": err.name(), "message": err.str()}
    print(json.dumps(result))
elif mode == "commit-metadata":
    from confluent_kafka import Consumer, TopicPartition

    topic, metadata = sys.argv[3], sys.argv[4]
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])["%s" % topic].result(timeout=10)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "meta-group", "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 3, metadata=metadata)], asynchronous=False)
    c.close()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "meta-group"})
    got = c.committed([TopicPartition(topic, 0)], timeout=10)[0]
    c.close()
    print(json.dumps({"offset": got.offset, "metadata": got.metadata}))
elif mode == "offsets-expire":
    # Group "live" commits once and stays a member; group "gone" commits once and leaves.
    # After `wait` seconds (past the server's offsets retention) each group's committed offset.
    import time

    from confluent_kafka import Consumer, TopicPartition

    topic, wait = sys.argv[3], float(sys.argv[4])
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=10)
    gone = Consumer({"bootstrap.servers": bootstrap, "group.id": "gone", "enable.auto.commit": False})
    gone.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    gone.close()
    live = Consumer({"bootstrap.servers": bootstrap, "group.id": "live", "enable.auto.commit": False})
    live.subscribe([topic])
    deadline = time.time() + 30
    while not live.assignment() and time.time() < deadline:
        live.poll(0.1)
    live.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    until = time.time() + wait
    while time.time() < until:
        live.poll(0.1)
    kept = live.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    live.close()
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": "gone"})
    expired = check.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    check.close()
    print(json.dumps({"live": kept, "gone": expired}))
elif mode == "offsets-for-times":
    # One batch of records stamped 1000, 2000, ... ms; then the offset for a time between two.
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = sys.argv[3]
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=10)
    base = 1_700_000_000_000
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200})
    for i in range(10):
        p.produce(topic, value=b"v%d" % i, partition=0, timestamp=base + i * 1000)
    p.flush(10)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "times"})
    found = c.offsets_for_times([TopicPartition(topic, 0, base + 4500)], timeout=10)[0]
    exact = c.offsets_for_times([TopicPartition(topic, 0, base + 7000)], timeout=10)[0]
    c.close()
    print(json.dumps({"between": found.offset, "exact": exact.offset}))
