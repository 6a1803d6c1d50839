#!/usr/bin/env bash
# Installs the peers `spate-bench peers` compares against, from Debian's packages:
# nats-server (NATS with JetStream) and redis-server (Redis Streams). The benchmark starts its
# own instances on loopback ports; the packaged services are stopped so they hold no ports.
set -euo pipefail
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Debian starts redis-server as a service on 6379; the benchmark does not need it.
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server || true
fi
nats-server --version
redis-server --version
