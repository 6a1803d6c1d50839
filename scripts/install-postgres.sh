#!/usr/bin/env bash
# Installs PostgreSQL 15 (Debian's postgresql-15) for the CDC tests and benchmark. They start
# their own throwaway clusters (initdb into a temporary directory, wal_level=logical, a free
# loopback port) and find the binaries in /usr/lib/postgresql/15/bin (or $SPATE_PG_BIN).
# The cluster Debian creates and starts on installation is stopped: nothing uses it.
set -euo pipefail
bin=${SPATE_PG_BIN:-/usr/lib/postgresql/15/bin}
if [ ! -x "$bin/postgres" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/psql" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15
    if command -v pg_ctlcluster >/dev/null; then
      pg_ctlcluster 15 main stop 2>/dev/null || true
    fi
  else
    echo "PostgreSQL 15 is missing: apt-get install postgresql-15 (or set SPATE_PG_BIN), or run as root" >&2
    exit 1
  fi
fi
"$bin/postgres" --version
