#!/usr/bin/env bash
# Install everything the tests need (system packages where missing, the venv, the Node test parsers),
# then run the linters and the whole test suite. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The ledger tests start a throwaway PostgreSQL cluster (tests/postgres_server.py). Debian keeps its
# binaries in /usr/lib/postgresql/<version>/bin, off PATH: look there too.
if ! { command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; } \
  && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing system packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The test extra includes llama-cpp-python, which pip builds from source the first time (10-25 minutes on a
# small machine, silent under -q); later runs install the wheel from pip's cache.
echo "installing the test packages (a first run builds llama-cpp-python from source: 10-25 minutes)"
.venv/bin/python -m pip install -q -e '.[test]'

if [ -f tests/js/package.json ]; then
  (cd tests/js && npm ci --silent --no-audit --no-fund)
fi

.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
# A process per core (pytest-xdist), each test file whole in one of them: its module-scoped servers are shared by
# its tests as written. 7-8 minutes on 2 cores instead of 12-14; "-n 0" as an argument runs one process.
.venv/bin/python -m pytest -n auto --dist loadfile "$@"
