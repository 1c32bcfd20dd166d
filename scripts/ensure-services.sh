#!/usr/bin/env bash
# Make sure the services the tests talk to are running: PostgreSQL on 127.0.0.1:5432 and RabbitMQ on
# 127.0.0.1:5672. Starts a stopped one; fails with the exact install command when one is not installed.
# (S3 needs nothing here: the tests start moto's S3 server on loopback themselves.)
set -euo pipefail

PG_HOST=${TT_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${TT_TEST_PG_PORT:-5432}
AMQP_HOST=${TT_TEST_AMQP_HOST:-127.0.0.1}
AMQP_PORT=${TT_TEST_AMQP_PORT:-5672}

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {  # name host port seconds
  for _ in $(seq "$4"); do
    listening "$2" "$3" && { echo "$1: up on $2:$3"; return 0; }
    sleep 1
  done
  echo "$1: did not come up on $2:$3 within $4 s" >&2
  return 1
}

if listening "$PG_HOST" "$PG_PORT"; then
  echo "postgresql: up on $PG_HOST:$PG_PORT"
elif command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  echo "postgresql: starting"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_for postgresql "$PG_HOST" "$PG_PORT" 60
else
  echo "postgresql: not installed. Install it with: apt-get install -y postgresql" >&2
  exit 1
fi

if listening "$AMQP_HOST" "$AMQP_PORT"; then
  echo "rabbitmq: up on $AMQP_HOST:$AMQP_PORT"
elif command -v rabbitmq-server >/dev/null; then
  echo "rabbitmq: starting"
  rabbitmq-server -detached
  wait_for rabbitmq "$AMQP_HOST" "$AMQP_PORT" 120
else
  echo "rabbitmq: not installed. Install it with: apt-get install -y rabbitmq-server" >&2
  exit 1
fi
