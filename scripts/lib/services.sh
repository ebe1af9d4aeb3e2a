# shellcheck shell=bash
# Finds, starts or installs what the project needs outside Rust: PostgreSQL and Redis (real
# servers, never imitations), the Python clients used as independent judges of the simulators.
# Sourced by scripts/test and scripts/sandbox. Throwaway servers live in a temporary directory
# and are stopped when the calling script exits.

CACHE_DIR=${CRABGLAMP_CACHE:-$HOME/.cache/crabglamp}
mkdir -p "$CACHE_DIR"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }
can_apt() { is_root && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  log "installing with apt: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } \
    || die "apt-get install $* failed"
}

# The directory with initdb and pg_ctl (Debian keeps them off PATH).
pg_bindir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"; return
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

# Installs the PostgreSQL server and client, Redis and the Python venv module when missing,
# with apt as root on Debian; otherwise says exactly what to install.
ensure_service_binaries() {
  local missing=()
  pg_bindir >/dev/null || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  if ((${#missing[@]})); then
    can_apt || die "missing: ${missing[*]}. Install them (Debian: sudo apt-get install ${missing[*]}) or point DATABASE_URL and REDIS_URL at running servers."
    apt_install "${missing[@]}"
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

THROWAWAY_DIR=""
cleanup_throwaway() {
  [ -n "$THROWAWAY_DIR" ] || return 0
  if [ -f "$THROWAWAY_DIR/pg/postmaster.pid" ]; then
    run_as_pg_user "$(pg_bindir)/pg_ctl" -D "$THROWAWAY_DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -f "$THROWAWAY_DIR/redis.pid" ]; then
    kill "$(cat "$THROWAWAY_DIR/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$THROWAWAY_DIR"
}

# Sets THROWAWAY_DIR (not in a subshell: the EXIT trap must belong to the calling script).
ensure_throwaway_dir() {
  if [ -z "$THROWAWAY_DIR" ]; then
    THROWAWAY_DIR=$(mktemp -d "${TMPDIR:-/tmp}/crabglamp-services.XXXXXX")
    chmod 755 "$THROWAWAY_DIR"
    trap cleanup_throwaway EXIT
  fi
}

# initdb refuses to run as root: use the postgres system user that Debian's package creates.
run_as_pg_user() {
  if is_root; then
    getent passwd postgres >/dev/null || useradd --system --no-create-home postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_reachable() { psql "$1" -qAtc 'SELECT 1' >/dev/null 2>&1; }

# Exports DATABASE_URL: the given one (which must answer), else localhost:5432 as postgres,
# else a throwaway server.
find_or_start_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    pg_reachable "$DATABASE_URL" || die "DATABASE_URL is set but PostgreSQL does not answer there"
    log "PostgreSQL: using DATABASE_URL"; return
  fi
  local local_url=postgres://postgres@127.0.0.1:5432/postgres
  if pg_reachable "$local_url"; then
    export DATABASE_URL=$local_url; log "PostgreSQL: found on 127.0.0.1:5432"; return
  fi
  local dir port bindir
  ensure_throwaway_dir; dir=$THROWAWAY_DIR; port=$(free_port 55432); bindir=$(pg_bindir) || die "no initdb/pg_ctl found"
  mkdir -p "$dir/pg" && is_root && chown postgres "$dir/pg"
  log "PostgreSQL: starting a throwaway server on 127.0.0.1:$port"
  run_as_pg_user "$bindir/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 >/dev/null \
    || die "initdb failed"
  run_as_pg_user "$bindir/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w \
    -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || die "PostgreSQL did not start; see $dir/pg/server.log"
  export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres
}

redis_reachable() { [ "$(redis-cli -u "$1" PING 2>/dev/null)" = PONG ]; }

# Exports REDIS_URL: the given one, else localhost:6379, else a throwaway server.
find_or_start_redis() {
  if [ -n "${REDIS_URL:-}" ]; then
    redis_reachable "$REDIS_URL" || die "REDIS_URL is set but Redis does not answer there"
    log "Redis: using REDIS_URL"; return
  fi
  if redis_reachable redis://127.0.0.1:6379; then
    export REDIS_URL=redis://127.0.0.1:6379; log "Redis: found on 127.0.0.1:6379"; return
  fi
  local dir port
  ensure_throwaway_dir; dir=$THROWAWAY_DIR; port=$(free_port 56379)
  log "Redis: starting a throwaway server on 127.0.0.1:$port"
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null || die "redis-server did not start"
  local i
  for i in $(seq 1 100); do redis_reachable "redis://127.0.0.1:$port" && break; sleep 0.1; done
  redis_reachable "redis://127.0.0.1:$port" || die "Redis did not answer; see $dir/redis.log"
  export REDIS_URL=redis://127.0.0.1:$port
}

# Exports CRABGLAMP_PYTHON: a venv with the official Hetzner, Cloudflare and Kubernetes Python
# clients and AWS's botocore, the independent judges of the simulators and the presigned URLs.
ensure_python_clients() {
  local venv="$HOME/.cache/crabglamp-venv" stamp="$HOME/.cache/crabglamp-venv/.crabglamp-clients-v2"
  if [ ! -f "$stamp" ]; then
    command -v python3 >/dev/null 2>&1 || { can_apt && apt_install python3; } || die "python3 is missing (Debian: apt-get install python3 python3-venv)"
    python3 -m venv "$venv" >/dev/null 2>&1 || { rm -rf "$venv"; can_apt && apt_install python3-venv && python3 -m venv "$venv"; } \
      || die "cannot create a Python venv (Debian: apt-get install python3-venv)"
    log "installing the official Python clients into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check hcloud cloudflare kubernetes botocore || die "pip install of the Python clients failed"
    touch "$stamp"
  fi
  export CRABGLAMP_PYTHON="$venv/bin/python"
}

# Puts Debian's `cloud-init` on PATH: tests/cloud_init.rs validates the operator's user data
# with its own `cloud-init schema`, the judge a real server applies. Installing it only to
# validate must not change how this machine boots: cloud-init's generator skips every
# cloud-init unit while /etc/cloud/cloud-init.disabled exists, so that file is written first
# (harmless in a container or on CI, where nothing boots with systemd; never written on a
# machine that already had cloud-init, which presumably wants it).
ensure_cloud_init() {
  command -v cloud-init >/dev/null 2>&1 && return 0
  can_apt || die "cloud-init is missing (Debian: sudo apt-get install --no-install-recommends cloud-init); the user-data tests validate with its schema checker"
  mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
  apt_install --no-install-recommends cloud-init
  command -v cloud-init >/dev/null 2>&1 || die "cloud-init was installed but is not on PATH"
}

# The metadata-restriction test (tests/cloud_init.rs) runs the Agent's first boot command in
# network namespaces with each firewall tool a server image may have.
ensure_firewall_tools() {
  local missing=()
  command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
  command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
  [ ${#missing[@]} -eq 0 ] && return 0
  can_apt || die "missing: ${missing[*]} (Debian: sudo apt-get install ${missing[*]}); the metadata-restriction test runs them"
  apt_install --no-install-recommends "${missing[@]}"
}

# Makes sure rustfmt and clippy exist (a minimal rustup profile lacks them).
ensure_rust_components() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo fmt/clippy missing and no rustup to add them"
    rustup component add rustfmt clippy
  fi
}
