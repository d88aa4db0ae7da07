#!/usr/bin/env bash
# Install (when missing) and start the services the test suite needs: PostgreSQL and Redis
# from Debian packages, plus nginx and the deployment validators' system tools.
# Idempotent; needs no systemd. Prints the URLs to export.
set -euo pipefail

PG_PORT="${OLLAMA_WEB_TEST_PG_PORT:-5432}"
REDIS_PORT="${OLLAMA_WEB_TEST_REDIS_PORT:-6379}"
APT_PACKAGES=(postgresql redis-server nginx docker-compose systemd chromium openssl)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
fi

# PostgreSQL: Debian's cluster wrapper; create a cluster if the package did not.
PG_VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
  as_root pg_createcluster "$PG_VERSION" main --port "$PG_PORT" >&2
fi
CLUSTER="$(pg_lsclusters -h | head -n 1 | awk '{print $1" "$2}')"
if ! pg_lsclusters -h | head -n 1 | grep -q online; then
  as_root pg_ctlcluster $CLUSTER start >&2
fi
PG_PORT="$(pg_lsclusters -h | head -n 1 | awk '{print $3}')"
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.2
done
as_root su postgres -c "psql -q -p $PG_PORT -tc \"SELECT 1 FROM pg_roles WHERE rolname='ollama_web'\"" \
  | grep -q 1 || as_root su postgres -c \
  "psql -q -p $PG_PORT -c \"CREATE ROLE ollama_web LOGIN SUPERUSER PASSWORD 'ollama_web'\"" >&2

# TLS, so the suite proves DATABASE_URL's sslmode/sslrootcert against a real server: a
# self-signed certificate for 127.0.0.1 (its own CA), made once; `ssl` needs only a reload.
PG_TLS_DIR=/var/lib/postgresql/ollama-web-test-tls
if ! as_root test -s "$PG_TLS_DIR/server.key"; then
  as_root mkdir -p "$PG_TLS_DIR"
  as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$PG_TLS_DIR/server.key" -out "$PG_TLS_DIR/server.crt" 2>/dev/null
  as_root chown -R postgres:postgres "$PG_TLS_DIR"
  as_root chmod 755 "$PG_TLS_DIR" && as_root chmod 644 "$PG_TLS_DIR/server.crt"
  as_root chmod 600 "$PG_TLS_DIR/server.key"
fi
pg_tls() {
  echo "SELECT current_setting('ssl') || ' ' || current_setting('ssl_cert_file')" \
    | as_root su postgres -c "psql -q -p $PG_PORT -tA"
}
if [ "$(pg_tls)" != "on $PG_TLS_DIR/server.crt" ]; then  # off, or another certificate
  as_root su postgres -c "psql -q -p $PG_PORT \
    -c \"ALTER SYSTEM SET ssl_cert_file = '$PG_TLS_DIR/server.crt'\" \
    -c \"ALTER SYSTEM SET ssl_key_file = '$PG_TLS_DIR/server.key'\" \
    -c 'ALTER SYSTEM SET ssl = on' -c 'SELECT pg_reload_conf()'" >/dev/null
  for _ in $(seq 1 50); do
    [ "$(pg_tls)" = "on $PG_TLS_DIR/server.crt" ] && break
    sleep 0.1
  done
fi

# Redis: a daemon on loopback only, no persistence.
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes >&2
  for _ in $(seq 1 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

echo "export OLLAMA_WEB_TEST_PG_URL=postgresql://ollama_web:ollama_web@127.0.0.1:${PG_PORT}/postgres"
echo "export OLLAMA_WEB_TEST_REDIS_URL=redis://127.0.0.1:${REDIS_PORT}/0"
echo "export OLLAMA_WEB_TEST_PG_CA=${PG_TLS_DIR}/server.crt"
