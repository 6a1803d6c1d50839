"""confluent-kafka: fill a topic with small segments, or read all of it back.

Usage: confluent_segments.py produce BOOTSTRAP TOPIC COUNT SEGMENT_BYTES
       confluent_segments.py consume BOOTSTRAP TOPIC
       confluent_segments.py consume-all BOOTSTRAP TOPIC PARTITIONS
`produce` creates the topic with one partition and `segment.bytes`, then sends COUNT records
of 200 bytes with acks=all, one request at a time, so that each record is its own batch.
`consume` reads partition 0 from the beginning to its high watermark. Each prints one JSON
object: the acknowledged offsets, or the values read and the high watermark.
"""
import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]


def value(i):
    return ("record-%05d-" % i).ljust(200, "x").encode()


if mode == "produce":
    count, segment_bytes = int(sys.argv[4]), sys.argv[5]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=1, replication_factor=1, config={"segment.bytes": segment_bytes})
    for f in admin.create_topics([new]).values():
        f.result(timeout=10)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    offsets, errors = [], []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    for i in range(count):
        producer.produce(topic, value=value(i), partition=0, on_delivery=delivered)
        producer.flush(30)
    print(json.dumps({"offsets": offsets, "errors": errors}))
elif mode == "produce-one":
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0, "message.timeout.ms": 10000})
    result = {}

    def delivered(err, msg):
        result["error"] = None if err is None else err.name()
        result["offset"] = None if err is not None else msg.offset()

    producer.produce(topic, value=value(int(sys.argv[4])), partition=0, on_delivery=delivered)
    producer.flush(30)
    print(json.dumps(result))
elif mode == "consume-all":
    # Every record of every partition: [[partition, offset, value], ...].
    partitions = int(sys.argv[4])
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "all-reader", "enable.auto.commit": False})
    records = []
    for p in range(partitions):
        tp = TopicPartition(topic, p, 0)
        _, high = c.get_watermark_offsets(tp, timeout=10)
        c.assign([tp])
        last = -1
        while last < high - 1:
            msg = c.poll(10)
            if msg is None:
                break
            if msg.error():
                raise KafkaException(msg.error())
            records.append([p, msg.offset(), msg.value().decode()])
            last = msg.offset()
    c.close()
    print(json.dumps({"records": records}))
else:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "segments-reader", "enable.auto.commit": False})
    tp = TopicPartition(topic, 0, 0)
    _, high = c.get_watermark_offsets(tp, timeout=10)
    c.assign([tp])
    values, offsets = [], []
    while not offsets or offsets[-1] < high - 1:
        msg = c.poll(10)
        if msg is None:
            break
        if msg.error():
            raise KafkaException(msg.error())
        values.append(msg.value().decode().rstrip("x"))
        offsets.append(msg.offset())
    c.close()
    print(json.dumps({"values": values, "offsets": offsets, "high_watermark": high}))
