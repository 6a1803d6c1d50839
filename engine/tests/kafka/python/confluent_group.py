"""Three consumers in one group share a topic; one leaves; the rest take over its partitions.

Usage: confluent_group.py BOOTSTRAP TOPIC PARTITIONS STRATEGY
Creates the topic (CreateTopics), produces in two rounds, and commits every message
synchronously after processing it, so that with committed offsets nothing is read twice across
the rebalance. A second group reads the whole topic (fan-out). Prints one JSON object.
"""
import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, partitions, strategy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ROUND = 1500

admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
    f.result(timeout=10)

producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2})


def produce(first, n):
    for i in range(first, first + n):
        producer.produce(topic, key=str(i).encode(), value=str(i).encode())
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


lock = threading.Lock()
seen = []  # (consumer index, value)
assigned = {}  # consumer index -> set of partitions, as of now
errors = []


def on_assign(index):
    def cb(consumer, parts):
        with lock:
            if strategy == "cooperative-sticky":
                assigned.setdefault(index, set()).update(p.partition for p in parts)
            else:
                assigned[index] = {p.partition for p in parts}
    return cb


def on_revoke(index):
    def cb(consumer, parts):
        with lock:
            assigned.setdefault(index, set()).difference_update(p.partition for p in parts)
    return cb


def run(index, stop, group, sink):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 300,
        "partition.assignment.strategy": strategy,
    })
    c.subscribe([topic], on_assign=on_assign(index), on_revoke=on_revoke(index))
    while not stop.is_set():
        msg = c.poll(0.1)
        if msg is None:
            continue
        if msg.error():
            errors.append(str(msg.error()))
            continue
        with lock:
            sink.append((index, int(msg.value())))
        try:
            c.commit(message=msg, asynchronous=False)
        except KafkaException as e:
            # Not fatal: the message may be read again (and counted as a duplicate).
            errors.append(f"commit: {e}")
    c.close()


def wait_until(cond, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


produce(0, ROUND)
stops = [threading.Event() for _ in range(3)]
threads = [threading.Thread(target=run, args=(i, stops[i], "workers", seen)) for i in range(3)]
for t in threads:
    t.start()
all_three = wait_until(lambda: all(assigned.get(i) for i in range(3)) and len(seen) >= ROUND // 3, 40)
with lock:
    during = {i: sorted(assigned.get(i, ())) for i in range(3)}
stops[2].set()
threads[2].join()
taken_over = wait_until(lambda: sorted(assigned.get(0, set()) | assigned.get(1, set())) == list(range(partitions)), 40)
with lock:
    after = {i: sorted(assigned.get(i, ())) for i in range(2)}
produce(ROUND, ROUND)
done = wait_until(lambda: len({v for _, v in seen}) >= 2 * ROUND, 60)
stops[0].set()
stops[1].set()
for t in threads[:2]:
    t.join()

fanout = []
fstop = threading.Event()
ft = threading.Thread(target=run, args=(9, fstop, "auditors", fanout))
ft.start()
wait_until(lambda: len(fanout) >= 2 * ROUND, 40)
fstop.set()
ft.join()

values = [v for _, v in seen]
print(json.dumps({
    "all_three_assigned": all_three,
    "during": during,
    "taken_over": taken_over,
    "after": after,
    "done": done,
    "read": len(values),
    "distinct": len(set(values)),
    "missing": 2 * ROUND - len(set(values)),
    "duplicates": len(values) - len(set(values)),
    "per_consumer": {i: sum(1 for c, _ in seen if c == i) for i in range(3)},
    "fanout_distinct": len({v for _, v in fanout}),
    "errors": errors[:5],
}))
