"""A compacted topic through confluent-kafka: create it with cleanup.policy=compact, produce
keyed records (an idempotent producer) and tombstones, then read it from the beginning until
compaction has shrunk it. Alters a compaction config and reads it back.

Usage: confluent_compaction.py BOOTSTRAP TOPIC
Prints one JSON object.
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

bootstrap, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
config = {"cleanup.policy": "compact", "segment.bytes": "4096", "min.cleanable.dirty.ratio": "0.01"}
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=config)])[topic].result(timeout=30)


def describe():
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {k: v.value for k, v in entries.items()}


policy = describe()["cleanup.policy"]

keys, rounds = 50, 40
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
errors = []
for r in range(rounds):
    for k in range(keys):
        producer.produce(topic, key=f"key-{k}", value=f"value-{r}-{k}")
    # A batch per round: segments of a few batches each, so that most of them are sealed.
    assert producer.flush(30) == 0
for k in range(0, keys, 10):
    producer.produce(topic, key=f"key-{k}", value=None)
assert producer.flush(30) == 0
produced = rounds * keys + keys // 10
keyless = Producer({"bootstrap.servers": bootstrap})
keyless.produce(topic, value=b"no key", on_delivery=lambda err, msg: errors.append(err.name() if err else None))
keyless.flush(30)


def read_all():
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time()}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    records, empty = [], 0
    while empty < 3:
        m = c.poll(1.0)
        if m is None:
            empty += 1
            continue
        if m.error():
            raise KafkaException(m.error())
        records.append((m.offset(), m.key().decode(), None if m.value() is None else m.value().decode()))
    c.close()
    return records


deadline = time.time() + 60
records = read_all()
while len(records) > produced // 4 and time.time() < deadline:
    time.sleep(0.5)
    records = read_all()

latest = {}
for _, k, v in records:
    latest[k] = v

# kafka-python reads the same compacted log (gaps, empty batches) to the same state.
from kafka import KafkaConsumer, TopicPartition  # noqa: E402

kp = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
tp = TopicPartition(topic, 0)
kp.assign([tp])
kp.seek_to_beginning(tp)
kp_records = [(m.offset, m.key.decode(), None if m.value is None else m.value.decode()) for m in kp]
kp.close()
resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
    ConfigEntry("min.compaction.lag.ms", "60000", incremental_operation=AlterConfigOpType.SET)])
admin.incremental_alter_configs([resource])[resource].result(timeout=30)
after_alter = describe()
print(json.dumps({
    "policy": policy,
    "produced": produced,
    "read": len(records),
    "offsets_increase": all(a[0] < b[0] for a, b in zip(records, records[1:])),
    "latest": latest,
    "kafka_python_same": kp_records == records,
    "kafka_python_read": len(kp_records),
    "keyless": errors,
    "min_lag": after_alter["min.compaction.lag.ms"],
    "policy_after_alter": after_alter["cleanup.policy"],
}))
