#!/usr/bin/env bash
# The one test command (README, .ci/run and the CI workflow all call this).
# On a fresh machine it sets up everything: the virtualenv with the dev extras, the Debian
# packages and services the tests need (PostgreSQL, Redis, nginx, docker-compose, systemd),
# then runs the quality gates and the whole suite with the coverage gate. Exits non-zero on
# any failure. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

step() { printf '\n==> %s\n' "$*"; }

step "python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
  | { grep -v -e '^WARNING: Location' -e '^$' || true; }
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"  # VENV may be relative or absolute

step "services (PostgreSQL, Redis, tools)"
mkdir -p .test-logs
eval "$(bash scripts/services.sh 2>.test-logs/services.log)" || {
  cat .test-logs/services.log >&2
  exit 1
}
echo "PostgreSQL: ${OLLAMA_WEB_TEST_PG_URL}"
echo "Redis:      ${OLLAMA_WEB_TEST_REDIS_URL}"
export CI="${CI:-}"

step "ruff check"
ruff check src tests scripts bench
step "ruff format --check"
ruff format --check src tests scripts bench
step "mypy --strict (package)"
mypy src

# One pytest worker per core (pytest-xdist; at most 8): the suite spends much of its time
# waiting on servers it started, and coverage doubles its CPU. TEST_WORKERS=0 runs it in
# this one process.
WORKERS="${TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}"
[ "$WORKERS" -gt 8 ] && WORKERS=8
# A hung test is ended by tests/fixtures/hangwatch.py, which writes its stacks to
# .test-logs/hang-*.txt; should the run hang elsewhere, it is over after TEST_TIMEOUT seconds
# (SIGUSR1 first, which writes every process's stacks there too), and fails. At a terminal,
# timeout stays in its group, or Ctrl-C would not reach pytest (it then signals pytest alone).
TEST_TIMEOUT="${TEST_TIMEOUT:-2400}"
WATCH=(timeout --signal=USR1 --kill-after=20)
[ -t 0 ] && WATCH+=(--foreground)
step "pytest (SQLite and PostgreSQL, coverage gate, $WORKERS workers)"
rm -f .test-logs/hang-*.txt
set +e
"${WATCH[@]}" "$TEST_TIMEOUT" \
  python -m pytest -n "$WORKERS" --cov=ollama_web --cov-report=term --cov-fail-under=85 "$@"
status=$?
set -e
for report in .test-logs/hang-*.txt; do
  [ -s "$report" ] || continue
  step "stacks written by a hung run: $report"
  cat "$report"
done
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "pytest did not finish within ${TEST_TIMEOUT} s: failing" >&2
  exit 1
fi
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
