#!/usr/bin/env bash
# Start the local services the tests use (PostgreSQL, Redis, RabbitMQ, Mosquitto, NATS with JetStream) where
# they are installed but not running: CI machines start them before a session, this covers one that has not.
# Nothing is installed here; a service that is not installed is reported, and its tests say what is missing.
set -uo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {  # name port command...
  local name=$1 port=$2; shift 2
  if listening "$port"; then return 0; fi
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "ci_services: $name is not running on 127.0.0.1:$port and not installed" >&2
    return 0
  fi
  echo "ci_services: starting $name" >&2
  "$@" >/dev/null 2>&1 || echo "ci_services: could not start $name" >&2
  for _ in $(seq 1 60); do listening "$port" && return 0; sleep 0.5; done
  echo "ci_services: $name did not come up on port $port" >&2
}

if [ -d /etc/postgresql ]; then
  start PostgreSQL 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
start Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /tmp --logfile /tmp/redis-ci.log
start RabbitMQ 5672 rabbitmq-server -detached
start Mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf
start NATS 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 \
  -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
exit 0
