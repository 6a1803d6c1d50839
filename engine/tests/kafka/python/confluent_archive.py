"""An archiving topic through confluent-kafka: create it with remote.storage.enable=true and a
small retention.bytes, produce 600 records in small segments, wait until retention has moved
old segments to the archive, then read everything from the beginning.

Usage: confluent_archive.py BOOTSTRAP TOPIC ARCHIVE_PARTITION_DIR [read-only]
Prints one JSON object.
"""
import json
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, archive_dir = sys.argv[1], sys.argv[2], sys.argv[3]
read_only = len(sys.argv) > 4
if not read_only:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"segment.bytes": "1024", "retention.bytes": "2048", "remote.storage.enable": "true"}
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=config)])[topic].result(
        timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(600):
        producer.produce(topic, value=f"record-{i:04}")
        if i % 20 == 19:
            assert producer.flush(30) == 0
    deadline = time.time() + 30
    while time.time() < deadline:
        archived = [f for f in os.listdir(archive_dir)] if os.path.isdir(archive_dir) else []
        if len([f for f in archived if f.endswith(".log")]) >= 3:
            break
        time.sleep(0.2)

archived = sorted(f for f in os.listdir(archive_dir) if f.endswith(".log")) if os.path.isdir(archive_dir) else []
c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time()}", "enable.auto.commit": False})
low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
c.assign([TopicPartition(topic, 0, -2)])
values = []
while len(values) < high - low:
    m = c.poll(10)
    assert m is not None, f"timed out after {len(values)} records"
    assert not m.error(), m.error()
    values.append((m.offset(), m.value().decode()))
c.close()
print(json.dumps({"archived_segments": len(archived), "low": low, "high": high,
                  "in_order": values == [(i, f"record-{i:04}") for i in range(600)]}))
