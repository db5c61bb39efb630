# lib.sh: the parts shared by sync-vs-rsync.sh, audit-vs-csync2.sh, latency-vs-lsyncd.sh,
# checkout-burst.sh and save-events.sh.
# shellcheck shell=bash
# Sourced, not run; the script that sources it sets `here` (this directory) and KEEP first.

repo=$(cd "$here/../.." && pwd)
helper=(python3 "$here/bench_helper.py")

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '\n[bench] FAILED: %s\n' "$*" >&2
    exit 1
}

# need COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is missing (as root).
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing $2"
        apt-get install -y -q "$2" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; } || true
    fi
    command -v "$1" >/dev/null 2>&1 || die "$1 is needed (package $2)"
}

# ------------------------------------------------------------------ workspace, cleanup

# workspace NAME LOG_GLOB...: a new temporary directory $work (with $res and $logs in
# it) and the exit trap that removes it. On exit, cleanup ends the script's background
# jobs with end_jobs (defined below; a script may define its own) and, after a failure, shows the last
# lines of the logs in $logs that match a LOG_GLOB.
workspace() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    shift
    fail_logs=("$@")
    res="$work/results"
    logs="$work/logs"
    mkdir -p "$res" "$logs"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    end_jobs
    if [ "$status" -ne 0 ]; then
        local pattern f
        for pattern in "${fail_logs[@]}"; do
            for f in "$logs"/$pattern; do
                [ -s "$f" ] || continue
                printf '\n[bench] last lines of %s:\n' "${f##*/}" >&2
                tail -n 15 "$f" >&2
            done
        done
    fi
    if [ "$KEEP" = 1 ]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}

# --------------------------------------------------------------------------- build

# need_cargo: fail early when build would need cargo and there is none.
need_cargo() {
    [ -n "${GOSYNCD_BIN:-}" ] || command -v cargo >/dev/null 2>&1 ||
        die "cargo is needed to build gosyncd (or set GOSYNCD_BIN to a built binary)"
}

# build: the release binary, as $bin. With GOSYNCD_BIN set (the path of a binary built
# beforehand, e.g. on a busy machine or to compare two builds), that binary, unbuilt.
build() {
    if [ -n "${GOSYNCD_BIN:-}" ]; then
        bin=$(readlink -f "$GOSYNCD_BIN")
        if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
            die "GOSYNCD_BIN=$GOSYNCD_BIN is not an executable file"
        fi
        log "using $bin ($("$bin" --version)), not building"
        return 0
    fi
    log "building the release binary"
    (cd "$repo" && cargo build --release --quiet)
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/gosyncd"
    [ -x "$bin" ] || die "no binary at $bin"
}

# ------------------------------------------------------------------ certificate, configs

# certificate IP...: one self-signed certificate for all the IPs, $tls/gosyncd.{crt,key}.
certificate() {
    local san
    san=$(printf 'IP:%s,' "$@")
    tls="$work/tls"
    mkdir -p "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=gosyncd-bench \
        -addext subjectAltName="${san%,}" \
        -keyout "$tls/gosyncd.key" -out "$tls/gosyncd.crt" 2>"$logs/openssl.txt" ||
        die "openssl req failed: $(cat "$logs/openssl.txt")"
}

# write_config FILE ADDRESS ROOT DEBOUNCE(or "") REMOTE...: writes the config, then has
# $bin check it.
write_config() {
    local file=$1 address=$2 root=$3 debounce=$4
    shift 4
    {
        printf 'bind_address = "%s"\n\n' "$address"
        printf 'remotes = [\n'
        local r sep=""
        for r in "$@"; do
            printf '%s  "%s"' "$sep" "$r"
            sep=$',\n'
        done
        printf '\n]\n\n'
        printf 'tls_ca_certificate = "%s"\n' "$tls/gosyncd.crt"
        printf 'tls_certificate = "%s"\n' "$tls/gosyncd.crt"
        printf 'tls_private_key = "%s"\n\n' "$tls/gosyncd.key"
        printf 'root = "%s"\n' "$root"
        # Each daemon its own spool of undelivered changes (and its lock).
        printf 'state_directory = "%s-state"\n\n' "$root"
        [ -z "$debounce" ] || printf 'debounce = "%s"\n\n' "$debounce"
        printf 'directory "/etc/bench" {\n}\n'
    } >"$file"
    "$bin" -config "$file" check-config >"$logs/check-config.txt" 2>&1 ||
        die "check-config: $(cat "$logs/check-config.txt")"
}

# write_rsyncd_conf N MODULE PATH: $work/rsyncd$N.conf, one writable module.
write_rsyncd_conf() {
    local n=$1 module=$2 path=$3 ids=""
    # As root, the rsync daemon would write as "nobody" unless told otherwise.
    if [ "$(id -u)" = 0 ]; then ids=$'    uid = 0\n    gid = 0'; fi
    cat >"$work/rsyncd$n.conf" <<EOF
use chroot = no
reverse lookup = no
max connections = 0
log file = $logs/rsyncd$n.log
pid file = $work/rsyncd$n.pid

[$module]
    path = $path
    read only = false
    list = false
$ids
EOF
}

# ------------------------------------------------------------------------ daemons

# wait_listening IP PORT PID LOG: poll (at most 30 s) until something listens there.
wait_listening() {
    local ip=$1 port=$2 pid=$3 logfile=$4 n
    for ((n = 0; n < 300; n++)); do
        kill -0 "$pid" 2>/dev/null || die "the daemon for $ip:$port exited: $(tail -n 5 "$logfile")"
        "${helper[@]}" listening "$ip" "$port" && return 0
        sleep 0.1
    done
    die "nothing listens on $ip:$port after 30 s"
}

# start_daemons CONFIG LOG: the three gosyncd daemons (background jobs, their pids in
# $pids), node i's config and log named by CONFIG and LOG with @i@ replaced by i;
# returns once each listens on ${ips[i - 1]}:$gport.
start_daemons() {
    local i
    pids=()
    for i in 1 2 3; do
        "$bin" -config "${1//@i@/$i}" >"${2//@i@/$i}" 2>&1 &
        pids+=($!)
    done
    for i in 1 2 3; do
        wait_listening "${ips[i - 1]}" "$gport" "${pids[i - 1]}" "${2//@i@/$i}"
    done
}

# children_of PID: the process ids whose parent is PID (lsyncd's rsync runs).
children_of() { ps -o pid= --ppid "$1" 2>/dev/null || true; }

# stop PID: SIGTERM (with the children it started), at most 15 s, then SIGKILL.
stop() {
    local pid=$1 n c
    for c in $(children_of "$pid"); do kill "$c" 2>/dev/null || true; done
    kill "$pid" 2>/dev/null || true
    for ((n = 0; n < 150; n++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------ lsyncd

# start_rsyncd N IP PORT PATH: `rsync --daemon` (a background job) on IP:PORT with one
# writable module, nodeN, whose path is PATH; returns once it listens.
start_rsyncd() {
    local n=$1 ip=$2 port=$3 path=$4
    write_rsyncd_conf "$n" "node$n" "$path"
    rsync --daemon --no-detach --config="$work/rsyncd$n.conf" \
        --address="$ip" --port="$port" >"$logs/rsyncd$n.out" 2>&1 &
    wait_listening "$ip" "$port" "$!" "$logs/rsyncd$n.out"
}

# start_lsyncd KEY DELAY(or "") SOURCE TARGET...: lsyncd (a background job, its pid in
# $lsyncd_pid) with one `sync { default.rsync }` from SOURCE to each rsync:// TARGET,
# config $work/KEY.lua, log $logs/KEY.log; returns once its start-up (one full rsync
# per target) is over.
start_lsyncd() {
    local key=$1 delay=$2 source=$3 k started target
    shift 3
    {
        printf 'settings {\n    logfile = "%s",\n    statusFile = "%s",\n    nodaemon = true,\n}\n' \
            "$logs/$key.log" "$work/$key.status"
        for target in "$@"; do
            printf 'sync {\n    default.rsync,\n    source = "%s/",\n' "$source"
            printf '    target = "%s",\n' "$target"
            [ -z "$delay" ] || printf '    delay = %s,\n' "$delay"
            printf '}\n'
        done
    } >"$work/$key.lua"
    log "$key: starting lsyncd (delay ${delay:-default})"
    lsyncd -nodaemon "$work/$key.lua" >"$logs/$key.out" 2>&1 &
    lsyncd_pid=$!
    for ((k = 0; k < 1200; k++)); do
        kill -0 "$lsyncd_pid" 2>/dev/null ||
            die "lsyncd exited: $(tail -n 5 "$logs/$key.out" "$logs/$key.log" 2>/dev/null)"
        started=$(grep -c 'Startup of .* finished' "$logs/$key.log" 2>/dev/null || true)
        [ "${started:-0}" -ge "$#" ] && break
        sleep 0.1
    done
    [ "$k" -lt 1200 ] || die "lsyncd did not finish its start-up in 120 s"
}

# end_jobs: every process the sourcing script started is one of its background jobs (or
# a child of lsyncd, stopped with it): end them by id.
end_jobs() {
    local pid
    for pid in $(jobs -p); do stop "$pid"; done
}
