# shellcheck shell=bash
# Shared helpers for scripts/{kafka,postgres,mariadb,services,pc,share}.
# Sourced, never executed; the callers already run with `set -euo pipefail`.
#
# Conventions:
#   * stdout carries only the values a caller wants to capture (addresses,
#     URLs, export lines); all progress and errors go to stderr via kb_log.
#   * every service keeps its run data in a "state dir": pid, env, logs,
#     data, a lock file, and the owner registrations used for --owner-pid.

# Tag printed in front of every log line; each script sets its own.
KB_TAG="${KB_TAG:-kbatch}"

kb_log() { printf '[%s] %s\n' "$KB_TAG" "$*" >&2; }
kb_die() { kb_log "error: $*"; exit 1; }

# Where downloads (Kafka jars) and default state dirs live: outside the repo
# so a `git clean` never throws away the jar cache and run data never shows
# up as untracked files.
kb_cache_dir() {
  local dir="${KBATCH_CACHE_DIR:-$HOME/.cache/kbatch}"
  mkdir -p "$dir"
  printf '%s\n' "$dir"
}

# Seconds since the epoch with millisecond precision, for timing messages.
kb_now() { date +%s.%3N; }
# Elapsed seconds since a kb_now value, formatted like "3.42".
kb_since() { awk -v s="$1" -v e="$(kb_now)" 'BEGIN { printf "%.2f", e - s }'; }

# Print N (default 1) distinct free TCP ports on 127.0.0.1, one per line.
# The kernel picks them (bind to port 0); all sockets stay open until every
# port is chosen so the N ports cannot repeat. There is an unavoidable small
# race between closing and the server binding; the ephemeral range makes a
# collision very unlikely and the server would then fail loudly.
kb_free_port() {
  kb_need_cmd python3 python3
  python3 - "${1:-1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
}

# True if something accepts TCP connections on host:port right now.
kb_port_open() {
  # bash's /dev/tcp avoids depending on nc; timeout guards a hung connect.
  # shellcheck disable=SC2016 # $1/$2 expand in the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# kb_wait_port HOST PORT TIMEOUT_S [PID]: wait until the port accepts
# connections; with PID, give up early as soon as that process has died.
kb_wait_port() {
  local host="$1" port="$2" timeout_s="$3" pid="${4:-}"
  local deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    kb_port_open "$host" "$port" && return 0
    if [[ -n "$pid" ]] && ! kb_pid_alive "$pid"; then
      kb_log "process $pid exited while waiting for $host:$port"
      return 1
    fi
    sleep 0.1
  done
  kb_log "timed out after ${timeout_s}s waiting for $host:$port"
  return 1
}

# True if PID is a live (non-zombie) process. Zombies count as dead: an
# owner that exited but was not reaped yet must still trigger clean-up.
kb_pid_alive() {
  local pid="$1" stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  # Field 3 (after the parenthesised command name) is the state letter.
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# kb_pid_matches PID NEEDLE: PID is alive and its command line contains
# NEEDLE (e.g. our state dir). Guards against a stale pid file whose PID was
# reused by an unrelated process after a crash or reboot.
kb_pid_matches() {
  local pid="$1" needle="$2"
  kb_pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# kb_stop_pid PID SIGNAL TIMEOUT_S: send SIGNAL, wait up to TIMEOUT_S for the
# process to go away, then SIGKILL it. Returns 1 if SIGKILL was needed.
kb_stop_pid() {
  local pid="$1" sig="$2" timeout_s="$3"
  kb_pid_alive "$pid" || return 0
  kill -s "$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    kb_pid_alive "$pid" || return 0
    sleep 0.1
  done
  kb_log "pid $pid still alive ${timeout_s}s after SIG$sig; sending SIGKILL"
  kill -s KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kb_pid_alive "$pid" || return 1
    sleep 0.1
  done
  kb_log "warning: pid $pid survived SIGKILL"
  return 1
}

# apt-get update runs at most once per script run, and only when something
# actually has to be installed (it is slow and needs the network).
KB_APT_UPDATED=0
kb_apt_install() {
  ((EUID == 0)) || kb_die "need to install '$*' but not root; install it and retry"
  if ((KB_APT_UPDATED == 0)); then
    kb_log "apt-get update (needed to install: $*)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    KB_APT_UPDATED=1
  fi
  kb_log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# kb_need_cmd CMD PKG...: make sure CMD is on PATH, installing PKGs if not.
kb_need_cmd() {
  local cmd="$1"
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  kb_log "'$cmd' not found; installing Debian package(s): $*"
  kb_apt_install "$@"
  command -v "$cmd" >/dev/null 2>&1 || kb_die "'$cmd' still missing after installing $*"
}

# Parse the arguments every service script shares. Sets KB_CMD,
# KB_STATE_DIR (absolute, created) and KB_OWNER_PID (may be empty).
# $1 is the default state dir.
kb_parse_args() {
  local default_state="$1"
  shift
  KB_CMD="${1:-}"
  [[ -n "$KB_CMD" ]] || kb_usage
  shift
  KB_STATE_DIR="$default_state"
  KB_OWNER_PID=""
  while (($#)); do
    case "$1" in
      --state-dir) KB_STATE_DIR="${2:?--state-dir needs a value}"; shift 2 ;;
      --state-dir=*) KB_STATE_DIR="${1#*=}"; shift ;;
      --owner-pid) KB_OWNER_PID="${2:?--owner-pid needs a value}"; shift 2 ;;
      --owner-pid=*) KB_OWNER_PID="${1#*=}"; shift ;;
      -h | --help) kb_usage ;;
      *) kb_log "unknown argument: $1"; kb_usage ;;
    esac
  done
  if [[ -n "$KB_OWNER_PID" ]]; then
    [[ "$KB_OWNER_PID" =~ ^[0-9]+$ ]] || kb_die "--owner-pid must be a number"
    kb_pid_alive "$KB_OWNER_PID" || kb_die "--owner-pid $KB_OWNER_PID is not a running process"
  fi
  mkdir -p "$KB_STATE_DIR"
  KB_STATE_DIR="$(cd "$KB_STATE_DIR" && pwd -P)"
}

# Serialise up/down/watcher on one state dir (e.g. parallel test processes
# all calling `up`): fd 9 holds an flock on STATE/.lock until the script
# exits. The lock file itself is never deleted, so waiters always lock the
# same inode. KB_LOCK_HELD=1 means an exec'ing parent already holds it.
kb_lock() {
  [[ "${KB_LOCK_HELD:-0}" == 1 ]] && return 0
  exec 9>"$KB_STATE_DIR/.lock"
  flock -w "${KBATCH_LOCK_TIMEOUT:-900}" 9 || kb_die "timed out waiting for lock $KB_STATE_DIR/.lock"
}

# Shell snippet closing every inherited descriptor above 2: a server started
# from here must not keep a caller's pipe (or any lock) open.
# shellcheck disable=SC2016 # expands in the inner bash
KB_CLOSE_FDS='for fd in /proc/$$/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-"; fi; done;'

# kb_run_clean CMD...: run CMD with only stdin/stdout/stderr inherited (for
# commands like pg_ctl that leave a daemon behind).
kb_run_clean() {
  bash -c "$KB_CLOSE_FDS"' exec "$@"' _ "$@"
}

# kb_spawn_detached PIDFILE LOGFILE CMD...: start CMD in its own session
# (no controlling terminal, immune to the caller's Ctrl-C and process-group
# kills), stdin from /dev/null, stdout/stderr to LOGFILE and every other
# inherited descriptor closed, so that it never keeps a caller's pipe open
# (`$(scripts/kafka up)` must return) nor our state-dir lock (fd 9).
# Writes the server's PID into PIDFILE and prints it.
kb_spawn_detached() {
  local pidfile="$1" logfile="$2"
  shift 2
  rm -f "$pidfile"
  # The outer bash writes its own PID, then execs a bash that closes the
  # inherited fds and execs CMD: same PID throughout, even if setsid forked.
  # shellcheck disable=SC2016 # expands in the inner bash
  setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" \
    bash -c "$KB_CLOSE_FDS"' exec "$@"' _ "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  for _ in $(seq 1 100); do
    [[ -s "$pidfile" ]] && break
    sleep 0.05
  done
  [[ -s "$pidfile" ]] || kb_die "failed to start $1 (see $logfile)"
  cat "$pidfile"
}

# --- --owner-pid support ---------------------------------------------------
# STATE/owners/<pid> registers a process that wants the service; a detached
# watcher stops the service once every registered owner has exited. An `up`
# without --owner-pid marks the run "unowned" (STATE/unowned): someone wants
# it to outlive any single process, so the watcher stands down for good.

# kb_register_owner SCRIPT: record KB_OWNER_PID (or the unowned marker) and
# make sure a watcher is running. Call with the state-dir lock held, after
# the service is up and STATE/pid is written.
kb_register_owner() {
  local script="$1"
  if [[ -z "$KB_OWNER_PID" ]]; then
    : >"$KB_STATE_DIR/unowned"
    return 0
  fi
  if [[ -e "$KB_STATE_DIR/unowned" ]]; then
    kb_log "already running without an owner; --owner-pid $KB_OWNER_PID will not stop it"
    return 0
  fi
  mkdir -p "$KB_STATE_DIR/owners"
  : >"$KB_STATE_DIR/owners/$KB_OWNER_PID"
  local wpid
  wpid="$(cat "$KB_STATE_DIR/watcher.pid" 2>/dev/null || true)"
  if [[ -n "$wpid" ]] && kb_pid_matches "$wpid" "$KB_STATE_DIR"; then
    return 0
  fi
  mkdir -p "$KB_STATE_DIR/logs"
  wpid="$(kb_spawn_detached "$KB_STATE_DIR/watcher.pid" "$KB_STATE_DIR/logs/watcher.log" \
    "$script" __watch --state-dir "$KB_STATE_DIR")"
  kb_log "watcher $wpid will stop the service once owner pid $KB_OWNER_PID (and any later owners) exit"
}

# True if any registered owner is still alive.
kb_owners_alive() {
  local f
  for f in "$KB_STATE_DIR"/owners/*; do
    [[ -e "$f" ]] || continue
    kb_pid_alive "${f##*/}" && return 0
  done
  return 1
}

# What the watcher watches: a token that stays the same while the service it
# was started for runs, and changes or empties once that service is stopped or
# replaced. By default the live pid in STATE/pid; a script whose service is
# several processes that may die and be restarted one by one (scripts/kafka
# --brokers 3) defines its own after sourcing this file.
kb_watch_pid_token() {
  local pid
  pid="$(cat "$KB_STATE_DIR/pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kb_pid_alive "$pid" && printf '%s\n' "$pid"
}
kb_watch_token() { kb_watch_pid_token; }

# Body of `SCRIPT __watch`: runs detached; polls once a second.
kb_watch_loop() {
  local script="$1" token
  token="$(kb_watch_token || true)"
  kb_log "watching service ${token:-?} for owners in $KB_STATE_DIR/owners"
  while sleep 1; do
    # Stand down if the service was stopped or replaced by other means.
    [[ -n "$token" && "$(kb_watch_token || true)" == "$token" ]] || exit 0
    [[ -e "$KB_STATE_DIR/unowned" ]] && exit 0
    kb_owners_alive && continue
    # Re-check under the lock so a concurrent `up --owner-pid` that just
    # registered itself is not stopped under its feet.
    kb_lock
    if ! kb_owners_alive && [[ ! -e "$KB_STATE_DIR/unowned" ]]; then
      kb_log "all owners exited; stopping service"
      # exec keeps fd 9 (the lock) open for `down`, which skips locking.
      KB_LOCK_HELD=1 KB_IS_WATCHER=1 exec "$script" down --state-dir "$KB_STATE_DIR"
    fi
    exec 9>&-
  done
}

# Stop the watcher (if any) unless we are the watcher itself, and forget the
# owner registrations. Part of every `down`.
kb_clear_owners() {
  local wpid
  wpid="$(cat "$KB_STATE_DIR/watcher.pid" 2>/dev/null || true)"
  if [[ "${KB_IS_WATCHER:-0}" != 1 && -n "$wpid" ]] && kb_pid_matches "$wpid" "$KB_STATE_DIR"; then
    kill "$wpid" 2>/dev/null || true
  fi
  rm -rf "$KB_STATE_DIR/owners" "$KB_STATE_DIR/unowned" "$KB_STATE_DIR/watcher.pid"
}

# kb_write_env NAME VALUE: STATE/env holds NAME=VALUE (sourceable).
kb_write_env() {
  printf '%s=%s\n' "$1" "$2" >"$KB_STATE_DIR/env.tmp"
  mv "$KB_STATE_DIR/env.tmp" "$KB_STATE_DIR/env"
}

# kb_read_env NAME: value of NAME from STATE/env (empty if absent).
kb_read_env() {
  sed -n "s/^$1=//p" "$KB_STATE_DIR/env" 2>/dev/null | head -n 1
}

# Print the last lines of a log file to stderr (used on start-up failure).
kb_tail_log() {
  local file="$1" n="${2:-60}"
  if [[ -f "$file" ]]; then
    kb_log "---- last $n lines of $file ----"
    tail -n "$n" "$file" >&2 || true
    kb_log "---- end of $file ----"
  else
    kb_log "(no log at $file)"
  fi
}

# --- Java harnesses (scripts/pc, scripts/share) ------------------------------
# kb_mvn_package PROJECT JAR WHAT: `mvn package` the Maven project in PROJECT when its
# pom, settings or sources changed since the last build (hash in PROJECT/target/.build-stamp),
# producing JAR and PROJECT/target/lib. Parallel callers build once; the others wait, then
# reuse it. A maven-settings.xml beside the pom is used when present.
kb_mvn_source_hash() {
  (
    cd "$1"
    {
      sha256sum pom.xml
      [[ -f maven-settings.xml ]] && sha256sum maven-settings.xml
      find src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
  )
}

kb_mvn_up_to_date() {
  local project="$1" jar="$2"
  [[ -f "$jar" && -d "$project/target/lib" &&
    "$(cat "$project/target/.build-stamp" 2>/dev/null || true)" == "$(kb_mvn_source_hash "$project")" ]]
}

kb_mvn_package() {
  local project="$1" jar="$2" what="$3" target="$1/target"
  kb_mvn_up_to_date "$project" "$jar" && return 0
  kb_need_cmd java openjdk-17-jre-headless
  kb_need_cmd javac openjdk-17-jdk-headless
  kb_need_cmd mvn maven
  mkdir -p "$target"
  exec 8>"$target/.build.lock"
  flock -w 900 8 || kb_die "timed out waiting for $target/.build.lock"
  if ! kb_mvn_up_to_date "$project" "$jar"; then
    local want t0
    local -a settings=()
    [[ -f "$project/maven-settings.xml" ]] && settings=(-s "$project/maven-settings.xml")
    want="$(kb_mvn_source_hash "$project")"
    t0="$(kb_now)"
    kb_log "building the $what with Maven ..."
    rm -rf "$target/.build-stamp" "$jar" "${target:?}/lib" "${target:?}/classes" "${target:?}/maven-status"
    # Maven 3.8 prints stray colour resets even in batch mode: strip them.
    # shellcheck disable=SC2086 # KBATCH_MAVEN_ARGS is a list of flags
    if ! (cd "$project" && mvn -q -B -Dstyle.color=never "${settings[@]}" ${KBATCH_MAVEN_ARGS:-} \
      -f "$project/pom.xml" package 2>&1) | sed 's/\x1b\[[0-9;]*m//g' >&2; then
      kb_die "Maven build failed (see output above)"
    fi
    [[ -f "$jar" && -d "$target/lib" ]] || kb_die "Maven finished but $jar or $target/lib is missing"
    printf '%s\n' "$want" >"$target/.build-stamp"
    kb_log "built in $(kb_since "$t0")s: $jar"
  fi
  exec 8>&-
}
