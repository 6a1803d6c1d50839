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
