# Sourced by .ci/run before `make test` (bash, `set -euo pipefail` is on). Installs and starts what the labelling
# app's tests need, and exports the variables that turn their skips into failures:
#   - PostgreSQL 15 (Debian 12 package `postgresql`), a database and a user for the tests;
#   - Debian's Chromium (`chromium`, /usr/bin/chromium) for the Playwright browser tests.
# Needs root (CI containers run as root). Safe to source twice: everything is idempotent.

_as_postgres() {  # run one shell command as the postgres OS user
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sudo -u postgres /bin/sh -c "$1"; fi
}

_rlhflab_setup_system() {
  local sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; else
      echo "setup_system: not root and no sudo; skipping system packages" >&2; return 0; fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -x /usr/bin/chromium ]; then
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends postgresql chromium fonts-dejavu-core >/dev/null
  fi

  # The newest installed PostgreSQL major (15 on Debian 12); make its `main` cluster if the package did not.
  local ver
  ver="$(ls /usr/lib/postgresql | sort -n | tail -1)"
  if [ ! -d "/etc/postgresql/$ver/main" ]; then
    $sudo_cmd pg_createcluster "$ver" main >/dev/null
  fi
  local port
  port="$(awk -F= '/^[[:space:]]*port[[:space:]]*=/{gsub(/[^0-9]/,"",$2); print $2; exit}' \
          "/etc/postgresql/$ver/main/postgresql.conf")"
  port="${port:-5432}"
  if ! $sudo_cmd pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
    $sudo_cmd pg_ctlcluster "$ver" main start
  fi
  local i
  for i in $(seq 1 30); do
    if _as_postgres "psql -p $port -qAtc 'select 1'" >/dev/null 2>&1; then break; fi
    sleep 1
  done

  local user=rlhflab_test db=rlhflab_test password=rlhflab_test
  _as_postgres "psql -p $port -v ON_ERROR_STOP=1 -q" >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user') THEN
    CREATE ROLE $user LOGIN PASSWORD '$password' CREATEDB;
  END IF;
END \$\$;
SQL
  if ! _as_postgres "psql -p $port -qAtc \"select 1 from pg_database where datname='$db'\"" | grep -q 1; then
    _as_postgres "createdb -p $port -O $user $db"
  fi

  export RLHFLAB_TEST_POSTGRES_URL="postgresql://$user:$password@127.0.0.1:$port/$db"
  export RLHFLAB_REQUIRE_POSTGRES=1
  export RLHFLAB_CHROMIUM=/usr/bin/chromium
  export RLHFLAB_REQUIRE_BROWSER=1
  echo "setup_system: PostgreSQL $ver on port $port, Chromium at $RLHFLAB_CHROMIUM" >&2
}
_rlhflab_setup_system
unset -f _rlhflab_setup_system _as_postgres
