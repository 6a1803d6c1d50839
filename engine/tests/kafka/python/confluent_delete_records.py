"""DeleteRecords through confluent-kafka's AdminClient: produce 500 records in small segments,
delete those below offset 300, read from the beginning, then delete everything.

Usage: confluent_delete_records.py BOOTSTRAP TOPIC PARTITION_DIR
Prints one JSON object.
"""
import json
import os
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, partition_dir = sys.argv[1], sys.argv[2], sys.argv[3]
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config={"segment.bytes": "4096"})])[
    topic].result(timeout=30)
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
for i in range(500):
    producer.produce(topic, value=f"record-{i}")
    if i % 50 == 49:
        assert producer.flush(30) == 0


def segments():
    return sorted(f for f in os.listdir(partition_dir) if f.endswith(".log"))


before = segments()
deleted = admin.delete_records([TopicPartition(topic, 0, 300)])
low = list(deleted.values())[0].result(timeout=30).low_watermark
after = segments()

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
watermarks = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
c.assign([TopicPartition(topic, 0, -2)])  # OFFSET_BEGINNING
first = None
while first is None:
    m = c.poll(10)
    assert m is not None and not m.error(), m and m.error()
    first = (m.offset(), m.value().decode())
c.close()

beyond_error = None
try:
    list(admin.delete_records([TopicPartition(topic, 0, 10_000)]).values())[0].result(timeout=30)
except Exception as e:  # noqa: BLE001 - the client raises KafkaException
    beyond_error = e.args[0].name()
everything = list(admin.delete_records([TopicPartition(topic, 0, -1)]).values())[0].result(timeout=30).low_watermark
print(json.dumps({
    "low": low, "segments_before": len(before), "segments_after": len(after),
    "first_segment_after": after[0], "watermarks": list(watermarks), "first": first,
    "beyond_error": beyond_error, "everything": everything,
}))
