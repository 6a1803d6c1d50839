"""kafka-python: produce, or consume and commit, against one bootstrap address.

Usage: kafka_python_commit.py produce BOOTSTRAP TOPIC COUNT
       kafka_python_commit.py consume BOOTSTRAP TOPIC GROUP MAX
The consumer reads up to MAX messages of a group (from its committed offset, else the start),
commits after each, and prints the values it read as JSON, with the committed offset.
"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "produce":
    count = int(sys.argv[4])
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip", linger_ms=5)
    futures = [p.send(topic, key=str(i).encode(), value=str(i).encode(), partition=0) for i in range(count)]
    offsets = [f.get(timeout=30).offset for f in futures]
    p.close()
    print(json.dumps({"offsets": offsets}))
else:
    group, most = sys.argv[4], int(sys.argv[5])
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    values = []
    for msg in c:
        values.append(int(msg.value))
        c.commit()
        if len(values) >= most:
            break
    committed = c.committed(tp)
    c.close()
    print(json.dumps({"values": values, "committed": committed}))
