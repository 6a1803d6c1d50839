#!/usr/bin/env bash
# Installs the Kafka clients the protocol tests drive: kcat (Debian package) and, in a virtual
# environment, confluent-kafka (librdkafka) and kafka-python from PyPI.
# The environment goes to $SPATE_VENV (default: target/kafka-clients); the tests find its
# python through SPATE_PYTHON, which scripts/test.sh exports.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SPATE_VENV:-target/kafka-clients}

missing=()
command -v kcat >/dev/null || missing+=(kcat)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
fi

if ! "$venv/bin/python" -c 'import confluent_kafka, kafka' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check confluent-kafka==2.16.1 kafka-python==3.0.12
fi
kcat -V | head -1
"$venv/bin/python" -c 'import confluent_kafka, kafka; print("confluent-kafka", confluent_kafka.version()[0], "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__)'
