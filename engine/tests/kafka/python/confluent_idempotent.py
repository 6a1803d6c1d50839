"""Produce with acks=all and idempotence through librdkafka, then read everything back.

Usage: confluent_idempotent.py BOOTSTRAP TOPIC COUNT COMPRESSION
Prints one JSON object: what was acknowledged, what was read, duplicates and order breaks.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, count, compression = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

producer = Producer({
    "bootstrap.servers": bootstrap,
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": compression,
    "linger.ms": 5,
    "batch.num.messages": 200,
})
errors = []
acked = []


def delivered(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        acked.append((msg.partition(), msg.offset()))


for i in range(count):
    producer.produce(topic, key=str(i % 13).encode(), value=str(i).encode(), on_delivery=delivered)
    if i % 500 == 0:
        producer.poll(0)
left = producer.flush(30)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"reader-{topic}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
metadata = consumer.list_topics(topic, timeout=10)
partitions = sorted(metadata.topics[topic].partitions)
consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
values = []
last_offset = {}
order_breaks = 0
deadline = time.time() + 30
while len(values) < count and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        errors.append(str(msg.error()))
        continue
    p = msg.partition()
    if p in last_offset and msg.offset() <= last_offset[p]:
        order_breaks += 1
    last_offset[p] = msg.offset()
    values.append(int(msg.value()))
consumer.close()
print(json.dumps({
    "unflushed": left,
    "errors": errors[:5],
    "acked": len(acked),
    "acked_distinct": len(set(acked)),
    "read": len(values),
    "distinct": len(set(values)),
    "missing": len(set(range(count)) - set(values)),
    "order_breaks": order_breaks,
}))
