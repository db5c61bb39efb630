#!/usr/bin/env bash
# audit-vs-csync2.sh: how long gosyncd takes to audit and to sync a directory held by
# three peers when little or nothing changed, compared with csync2 doing the same work,
# on one machine over loopback.
#
# What it builds (all in a temporary directory, removed on exit):
#   * a deterministic tree of 10,000 files, about 100 MB, in 320 directories (the
#     generator of sync-vs-rsync.sh): node 1's /etc/bench, the source for both tools;
#   * one self-signed certificate made with the openssl command line, named by all three
#     tls_* keys of every gosyncd node and used by every csync2 instance as its
#     csync2_ssl_cert.pem / csync2_ssl_key.pem (TLS on for both tools);
#   * gosyncd: node 1 (the sender, 127.0.0.2) and three peer daemons on 127.0.0.3, .4
#     and .5; node 1 runs its daemon for (b2) and (c2) only (below);
#   * csync2: four instances, one per address, each with its own system directory
#     (CSYNC2_SYSTEM_DIR: csync2.cfg and the certificate; nothing is written to /etc),
#     its own database directory (-D) and its own name (-N ADDRESS, hosts named by
#     address); one group with one pre-shared key (csync2 -k), whose `prefix` maps the
#     directory to node 1's tree and to each peer's own copy; a csync2 daemon
#     (`csync2 -ii`) on each peer address, all on one port (-p).
#
# Both tools first bring the empty peers in line (one timed run each, shown for
# reference). Then, RUNS times each (median and min of wall-clock seconds):
#   (b) no-change audit                gosyncd sync -dry      | csync2 -cr /, then csync2 -T
#   (c) no-change sync                 gosyncd sync           | csync2 -x
#   (b2) (b), node 1's daemon running  gosyncd sync -dry      | (csync2's (b), not run again)
#   (c2) (c), node 1's daemon running  gosyncd sync           | (csync2's (c), not run again)
#   (d2) one file changed, sync all,   gosyncd sync           | (csync2's (d))
#        node 1's daemon running
#   (d) one file changed, sync all     gosyncd sync           | csync2 -x
#   (e) one file changed, that path    gosyncd sync PATH      | csync2 -c FILE, then csync2 -u
# In (b) and (c), node 1 runs no gosyncd daemon: `gosyncd sync` hashes node 1's tree
# itself. For (b2), (c2) and (d2), node 1's daemon runs (the same config, with a
# debounce of 60 s, so that its watcher holds (d2)'s edits while the timed sync pushes
# them; node1-daemon.hcl, which those runs use too): started after (c),
# with the group in sync (its first comparison must find no drift with any peer), it
# gives `gosyncd sync` node 1's digests (kept while its tree does not change) and, where
# they differ, its tree from its hash cache (checked with an untimed debug run before
# and after); in (d2), where node 1's digests differ from the peers', its levels and
# then its listing of the level that differs (checked with an untimed debug run). It
# is stopped before (d): its watcher would push the edits of (d) and (e) later on.
# The parts of (b) and (e) for csync2 are shown for reference. It also reports the peak RSS of each client run (/usr/bin/time) and the
# resident memory of the idle daemons of both tools (VmRSS: node 1's gosyncd daemon
# after (d2), the peers' after the runs). Every real sync is
# verified: each peer's tree must match the source (paths, types, modes, owners, sizes,
# SHA-256 of contents), and csync2 must have nothing left dirty; the script fails
# loudly otherwise. Last, untimed, it rewrites a file on one csync2 peer alone and says
# whether node 1's csync2 audit sees it.
#
# Run it from anywhere in the repository (it builds the release binary first, unless
# GOSYNCD_BIN names one):
#     contrib/bench/audit-vs-csync2.sh
# Settings (environment): RUNS=5  FILES=10000  TOTAL_MB=100 (FILES=100000 TOTAL_MB=100:
# 100,000 files of about 1 kB)  KEEP=1 (keep the temporary directory)  TMPDIR (where
# that directory goes)  GOSYNCD_BIN. Needs about 1 GB there with the defaults. Needs
# bash, python3, openssl, csync2 and /usr/bin/time; when run as root on a Debian-like
# system, missing csync2/time are installed with apt-get. Only loopback addresses are
# used. Takes a few minutes.

set -euo pipefail
export LC_ALL=C
# csync2 is installed in /usr/sbin.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

RUNS=${RUNS:-5}
FILES=${FILES:-10000}
TOTAL_MB=${TOTAL_MB:-100}
KEEP=${KEEP:-0}
SEED=20240611

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=contrib/bench/lib.sh
. "$here/lib.sh"

need python3 python3
need openssl openssl
need csync2 csync2
need /usr/bin/time time
need_cargo

# ------------------------------------------------------------------ workspace, cleanup

daemon_pids=()
csync2_pids=()

# end_jobs: every process this script started is one of its background jobs (a csync2
# daemon's per-connection children end with their connection): end them by id.
end_jobs() {
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    for pid in $(jobs -p); do wait "$pid" 2>/dev/null || true; done
}
workspace gosyncd-csync2 'peer*.log' 'node1.log' 'csync2-peer*.log'

# --------------------------------------------------------------------------- build

build

# ---------------------------------------------------------------------------- tree

src="$work/node1/etc/bench"
log "creating $FILES files (${TOTAL_MB} MB) in $src"
mkdir -p "$src"
target=$("${helper[@]}" gen "$src" "$FILES" $((TOTAL_MB * 1000 * 1000)) "$SEED")
if [ -z "$target" ] || [ ! -f "$src/$target" ]; then die "the generator named no file to edit"; fi
ndirs=$(find "$src" -type d | wc -l)
nfiles=$(find "$src" -type f | wc -l)
bytes=$(find "$src" -type f -printf '%s\n' | awk '{ n += $1 } END { print n }')

peers=(127.0.0.3 127.0.0.4 127.0.0.5)
cs="$work/csync2"
for i in 1 2 3; do
    mkdir -p "$work/peer$i/etc/bench" "$cs/peer$i/etc/bench"
done

# ------------------------------------------------------------------ certificate, ports

certificate 127.0.0.2 "${peers[@]}"

gport=$("${helper[@]}" freeport 18443 127.0.0.2 "${peers[@]}")
# csync2 connects to every peer on the port it uses itself: one port for all.
cport=$("${helper[@]}" freeport 30865 127.0.0.2 "${peers[@]}")
[ "$gport" != "$cport" ] || die "gosyncd and csync2 would share port $gport"

# ---------------------------------------------------------------------------- configs

remotes=("127.0.0.2:$gport" "127.0.0.3:$gport" "127.0.0.4:$gport" "127.0.0.5:$gport")
write_config "$work/node1.hcl" "127.0.0.2:$gport" "$work/node1" "" "${remotes[@]}"
write_config "$work/node1-daemon.hcl" "127.0.0.2:$gport" "$work/node1" 60s "${remotes[@]}"
for i in 1 2 3; do
    write_config "$work/peer$i.hcl" "${peers[i - 1]}:$gport" "$work/peer$i" "" "${remotes[@]}"
done

# csync2: instance NAME (node1, peer1..3) has its system directory $cs/sys-NAME (config,
# certificate and key, database directory db/) and is called by its address.
csync2_names=(node1 peer1 peer2 peer3)
csync2_addrs=(127.0.0.2 "${peers[@]}")
csync2 -k "$cs/csync2.key_bench" >"$logs/csync2-key.txt" 2>&1 ||
    die "csync2 -k failed: $(cat "$logs/csync2-key.txt")"
for name in "${csync2_names[@]}"; do
    sys="$cs/sys-$name"
    mkdir -p "$sys/db"
    cp "$tls/gosyncd.crt" "$sys/csync2_ssl_cert.pem"
    cp "$tls/gosyncd.key" "$sys/csync2_ssl_key.pem"
    {
        printf '# audit-vs-csync2.sh: node 1 and three peers on loopback, named by address.\n'
        printf 'group bench\n{\n'
        printf '\thost %s;\n' "${csync2_addrs[*]}"
        printf '\tkey %s;\n' "$cs/csync2.key_bench"
        printf '\tinclude %%bench%%;\n}\n\n'
        # Every instance holds the directory at its own path.
        printf 'prefix bench\n{\n'
        printf '\ton 127.0.0.2: %s;\n' "$src"
        for i in 1 2 3; do
            printf '\ton %s: %s;\n' "${peers[i - 1]}" "$cs/peer$i/etc/bench"
        done
        printf '}\n'
    } >"$sys/csync2.cfg"
done

# csync2_cmd NAME ARG...: csync2 as instance NAME (its system directory, database and
# name; every instance uses port $cport).
csync2_cmd() {
    local name=$1 k
    shift
    for k in 0 1 2 3; do [ "${csync2_names[k]}" = "$name" ] && break; done
    CSYNC2_SYSTEM_DIR="$cs/sys-$name" csync2 -N "${csync2_addrs[k]}" -D "$cs/sys-$name/db" \
        -p "$cport" "$@"
}

# ------------------------------------------------------------------------ daemons

log "starting 3 gosyncd peers on port $gport and 3 csync2 daemons on port $cport"
for i in 1 2 3; do
    "$bin" -config "$work/peer$i.hcl" >"$logs/peer$i.log" 2>&1 &
    daemon_pids+=($!)
    # Not through csync2_cmd: $! must be csync2's own process id.
    CSYNC2_SYSTEM_DIR="$cs/sys-peer$i" csync2 -N "${peers[i - 1]}" -D "$cs/sys-peer$i/db" \
        -p "$cport" -ii >"$logs/csync2-peer$i.log" 2>&1 &
    csync2_pids+=($!)
    wait_listening "${peers[i - 1]}" "$gport" "${daemon_pids[i - 1]}" "$logs/peer$i.log"
    wait_listening "${peers[i - 1]}" "$cport" "${csync2_pids[i - 1]}" "$logs/csync2-peer$i.log"
done

# ------------------------------------------------------------------------ helpers

# record KEY T0 T1: append the elapsed seconds to KEY's results.
record() {
    awk -v a="$2" -v b="$3" 'BEGIN { printf "%.4f\n", b - a }' >>"$res/$1.times"
}

# max_rss FILE: the last line /usr/bin/time -f %M wrote (kilobytes).
max_rss() { tail -n 1 "$1"; }

gosyncd_dirs=("$work/peer1/etc/bench" "$work/peer2/etc/bench" "$work/peer3/etc/bench")
csync2_dirs=("$cs/peer1/etc/bench" "$cs/peer2/etc/bench" "$cs/peer3/etc/bench")

# verify WHAT DIR...: every DIR must equal the source tree. Notes (files with another
# mtime than the source) are shown the first time only.
noted=0
verify() {
    local what=$1
    shift
    "${helper[@]}" verify "$src" "$@" 2>"$logs/verify.err" || {
        cat "$logs/verify.err" >&2
        die "$what: a peer differs from the source"
    }
    if [ -s "$logs/verify.err" ] && [ "$noted" = 0 ]; then
        sed 's/^/[bench]   /' "$logs/verify.err" | sort -u | head -n 3 >&2
        noted=1
    fi
}

# verify_csync2 WHAT: the csync2 peers equal the source and node 1 has nothing dirty
# (`csync2 -M` exits 2 when its dirty list is empty).
verify_csync2() {
    local status=0
    csync2_cmd node1 -M >"$logs/csync2-dirty.txt" 2>&1 || status=$?
    if [ "$status" != 2 ]; then
        head -n 5 "$logs/csync2-dirty.txt" >&2
        die "$1: csync2 -M (status $status) lists files still dirty on node 1"
    fi
    verify "$1" "${csync2_dirs[@]}"
}

# fail_run TOOL WHAT STATUS OUT: show what a failed run printed, then die.
fail_run() {
    printf '[bench] stderr of %s %s:\n' "$1" "$2" >&2
    tail -n 20 "$4.err" >&2
    printf '[bench] stdout (last lines):\n' >&2
    tail -n 5 "$4.out" >&2
    die "$1 $2 exited with status $3"
}

# gosyncd_run KEY RUN CONFIG ARG...: one timed `gosyncd -config CONFIG ARG...`.
gosyncd_run() {
    local key=$1 run=$2 config=$3
    shift 3
    local out="$logs/gosyncd-$key-$run" status=0 t0 t1
    sync # flush earlier writes so that they are not charged to this run
    t0=$EPOCHREALTIME
    /usr/bin/time -f %M -o "$out.rss" "$bin" -config "$config" "$@" >"$out.out" 2>"$out.err" ||
        status=$?
    t1=$EPOCHREALTIME
    [ "$status" -eq 0 ] || fail_run gosyncd "$* (scenario $key, run $run)" "$status" "$out"
    record "gosyncd-$key" "$t0" "$t1"
    max_rss "$out.rss" >>"$res/rss-gosyncd-$key.kb"
}

# csync2_run KEY RUN OK_STATUS ARG...: one timed `csync2 ARG...` as node 1; exit status
# OK_STATUS is success (0, or 2 for -T: "in sync").
csync2_run() {
    local key=$1 run=$2 ok=$3
    shift 3
    local out="$logs/csync2-$key-$run" status=0 t0 t1
    sync
    t0=$EPOCHREALTIME
    CSYNC2_SYSTEM_DIR="$cs/sys-node1" /usr/bin/time -f %M -o "$out.rss" \
        csync2 -N 127.0.0.2 -D "$cs/sys-node1/db" -p "$cport" "$@" >"$out.out" 2>"$out.err" ||
        status=$?
    t1=$EPOCHREALTIME
    [ "$status" -eq "$ok" ] || fail_run csync2 "$* (scenario $key, run $run)" "$status" "$out"
    record "csync2-$key" "$t0" "$t1"
    max_rss "$out.rss" >>"$res/rss-csync2-$key.kb"
}

# sum_last KEY PART...: KEY's result is the sum of the PARTs' last results.
sum_last() {
    local key=$1 part
    shift
    for part in "$@"; do tail -n 1 "$res/$part.times"; done |
        awk '{ t += $1 } END { printf "%.4f\n", t }' >>"$res/$key.times"
}

# changes FILE: the number of change lines ([+], [-], [M], ...) in a gosyncd report.
changes() { grep -c '^ *\[[^]]*\] ' "$1" || true; }

last() { tail -n 1 "$res/$1.times"; }

# ---------------------------------------------------------------------- scenarios

csync2_version=$(CSYNC2_SYSTEM_DIR="$work" csync2 2>&1 | awk 'NF { print $1, $2; exit }' || true)
printf '%s\n' "$("$bin" --version) vs ${csync2_version:-csync2}:" \
    "$nfiles files in $ndirs directories, $(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}') MB;" \
    "1 sender (127.0.0.2) -> 3 peers (127.0.0.3-5), TLS on; $RUNS runs each; $(nproc) CPUs" |
    paste -sd' ' >"$res/title"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "(a) initial sync to 3 empty peers, once per tool (a reference, not a scenario)"
gosyncd_run initial 1 "$work/node1.hcl" sync
verify "gosyncd initial sync" "${gosyncd_dirs[@]}"
# -v for this run only: it shows that every connection is TLS.
csync2_run initial 1 0 -x -v
verify_csync2 "csync2 initial sync"
tls_lines=$(grep -c 'Connecting to host .* (SSL)' "$logs/csync2-initial-1.err" || true)
if grep -q 'Connecting to host .* (PLAIN)' "$logs/csync2-initial-1.err"; then
    die "csync2 connected without TLS: $(grep -m1 PLAIN "$logs/csync2-initial-1.err")"
fi
[ "$tls_lines" -ge 3 ] || die "csync2 made $tls_lines TLS connections for 3 peers"
log "  gosyncd $(last gosyncd-initial)s, csync2 $(last csync2-initial)s" \
    "($tls_lines csync2 connections, all TLS)"

log "(b) no-change audit, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    # --exit-code: exit 1 if the dry run finds anything to change (a failure here).
    gosyncd_run nochange "$run" "$work/node1.hcl" sync -dry --exit-code
    # -cr: the local tree against node 1's database; -T: that database against each
    # peer's (exit 2: in sync).
    csync2_run check "$run" 0 -cr /
    csync2_run test "$run" 2 -T
    sum_last csync2-nochange csync2-check csync2-test
    [ ! -s "$logs/csync2-test-$run.out" ] ||
        die "csync2 -T listed differences: $(head -n 3 "$logs/csync2-test-$run.out")"
    log "  run $run: gosyncd $(last gosyncd-nochange)s, csync2 $(last csync2-nochange)s" \
        "(-cr $(last csync2-check)s, -T $(last csync2-test)s)"
done

log "(c) no-change sync, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    gosyncd_run nochangesync "$run" "$work/node1.hcl" sync
    n=$(changes "$logs/gosyncd-nochangesync-$run.out")
    [ "$n" = 0 ] || die "gosyncd reported $n changes with nothing changed"
    verify "gosyncd no-change sync (run $run)" "${gosyncd_dirs[@]}"
    csync2_run nochangesync "$run" 0 -x
    verify_csync2 "csync2 no-change sync (run $run)"
    log "  run $run: gosyncd $(last gosyncd-nochangesync)s, csync2 $(last csync2-nochangesync)s"
done

# (b2) and (c2): (b) and (c) again with node 1's daemon running (the same config); each
# run of `gosyncd sync` then takes node 1's tree from the daemon's hash cache instead of
# hashing it. csync2 has nothing that differs here: its figures are those of (b) and (c).

# wait_converged: node 1's daemon listens before its first scan; wait (at most 600 s:
# it hashes the whole tree first) until its first comparison found no drift with each
# of the 3 peers. A warning, or the daemon's exit, is a failure.
wait_converged() {
    local n k
    for ((k = 0; k < 6000; k++)); do
        kill -0 "$node1_pid" 2>/dev/null ||
            die "node 1's daemon exited: $(tail -n 5 "$logs/node1.log")"
        ! grep -q WARN "$logs/node1.log" ||
            die "node 1's daemon warned at start-up: $(grep -m 3 WARN "$logs/node1.log")"
        n=$(grep -c 'no drift with this peer' "$logs/node1.log" || true)
        [ "$n" -lt 3 ] || return 0
        sleep 0.1
    done
    die "node 1's daemon found no drift with $n of 3 peers in 600 s"
}

# own_manifest WHEN: an untimed dry run at debug level must say that it took node 1's
# digests (or, where they differ, its tree) from node 1's daemon (else it hashed the
# tree itself, and (b2) and (c2) would measure (b) and (c) again).
own_manifest() {
    local out="$logs/gosyncd-own-manifest-$1" status=0
    "$bin" -config "$work/node1-daemon.hcl" -d sync -dry --exit-code >"$out.out" 2>"$out.err" ||
        status=$?
    [ "$status" -eq 0 ] || fail_run gosyncd "-d sync -dry --exit-code ($1)" "$status" "$out"
    grep -qE "this node's (digests as its daemon keeps them|tree as its daemon knows it)" \
        "$out.err" || {
        grep -E "scanning here|no local daemon" "$out.err" | tail -n 3 >&2
        die "gosyncd sync did not take node 1's tree from node 1's daemon ($1)"
    }
}

log "starting node 1's gosyncd daemon on 127.0.0.2:$gport for (b2) and (c2)"
"$bin" -config "$work/node1-daemon.hcl" >"$logs/node1.log" 2>&1 &
node1_pid=$!
wait_listening 127.0.0.2 "$gport" "$node1_pid" "$logs/node1.log"
wait_converged
own_manifest before
log "  converged; sync takes node 1's tree from its daemon"

log "(b2) no-change audit, node 1's daemon running, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    gosyncd_run nochange-daemon "$run" "$work/node1-daemon.hcl" sync -dry --exit-code
    log "  run $run: gosyncd $(last gosyncd-nochange-daemon)s"
done

log "(c2) no-change sync, node 1's daemon running, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    gosyncd_run nochangesync-daemon "$run" "$work/node1-daemon.hcl" sync
    n=$(changes "$logs/gosyncd-nochangesync-daemon-$run.out")
    [ "$n" = 0 ] || die "gosyncd reported $n changes with nothing changed"
    verify "gosyncd no-change sync, node 1's daemon running (run $run)" "${gosyncd_dirs[@]}"
    log "  run $run: gosyncd $(last gosyncd-nochangesync-daemon)s"
done
own_manifest after

# (d2): an untimed debug dry run first must say that node 1's daemon listed the level
# that differs (else it listed node 1's whole tree, and (d2) would measure that).
"${helper[@]}" edit "$src/$target" 1001
out="$logs/gosyncd-own-levels"
"$bin" -config "$work/node1-daemon.hcl" -d sync -dry >"$out.out" 2>"$out.err" ||
    fail_run gosyncd "-d sync -dry (levels)" "$?" "$out"
grep -q "this node's levels that differ, as its daemon knows them" "$out.err" || {
    grep -E "levels cannot tell|tree as its daemon knows it" "$out.err" | tail -n 3 >&2
    die "gosyncd sync did not take the level that differs from node 1's daemon"
}
# Its edit pushed, untimed: each timed run below follows an edit of its own, so that
# node 1's daemon walks its tree again for each.
"$bin" -config "$work/node1-daemon.hcl" sync >"$out.out" 2>"$out.err" ||
    fail_run gosyncd "sync (levels)" "$?" "$out"
log "(d2) one file changed ($target), sync all, node 1's daemon running, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    "${helper[@]}" edit "$src/$target" $((1001 + run))
    gosyncd_run onefile-daemon "$run" "$work/node1-daemon.hcl" sync
    n=$(grep -c '\[M\]' "$logs/gosyncd-onefile-daemon-$run.out" || true)
    [ "$n" = 3 ] || die "gosyncd reported $n updates for one file on 3 peers"
    verify "gosyncd one-file sync, node 1's daemon running (run $run)" "${gosyncd_dirs[@]}"
    log "  run $run: gosyncd $(last gosyncd-onefile-daemon)s"
done

# Node 1's daemon idle, once nothing has happened for 2 s; then stopped (before (d)).
sleep 2
awk '/^VmRSS:/ { print $2 }' "/proc/$node1_pid/status" >"$res/rss-gosyncd-node1-idle.kb"
awk '/^VmHWM:/ { print $2 }' "/proc/$node1_pid/status" >"$res/rss-gosyncd-node1-hwm.kb"
stop "$node1_pid"
node1_warnings=$(grep -c 'WARN' "$logs/node1.log" || true)
log "  node 1's daemon stopped"

log "(d) one file changed ($target), sync all, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    "${helper[@]}" edit "$src/$target" $((2 * run))
    gosyncd_run onefile "$run" "$work/node1.hcl" sync
    n=$(grep -c '\[M\]' "$logs/gosyncd-onefile-$run.out" || true)
    [ "$n" = 3 ] || die "gosyncd reported $n updates for one file on 3 peers"
    verify "gosyncd one-file sync (run $run)" "${gosyncd_dirs[@]}"
    csync2_run onefile "$run" 0 -x
    verify_csync2 "csync2 one-file sync (run $run)"
    log "  run $run: gosyncd $(last gosyncd-onefile)s, csync2 $(last csync2-onefile)s"
done

log "(e) one file changed, sync that path only, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    # Versions after (d)'s: an edit sets the mtime VERSION + 1 s ahead, so every edit's
    # mtime is at least 1 s later than the last one's. csync2 compares whole seconds
    # (and the size, unchanged): (e)'s first edit with version 3 could fall in the
    # second of (d)'s last one, and csync2 -c would see no change.
    "${helper[@]}" edit "$src/$target" $((2 * (RUNS + run) + 1))
    gosyncd_run onepath "$run" "$work/node1.hcl" sync "/etc/bench/$target"
    n=$(grep -c '\[M\]' "$logs/gosyncd-onepath-$run.out" || true)
    [ "$n" = 3 ] || die "gosyncd reported $n updates for one file on 3 peers"
    verify "gosyncd one-path sync (run $run)" "${gosyncd_dirs[@]}"
    # `csync2 -x FILE` (and `-u FILE`) would push nothing here: with a prefix, the dirty
    # list holds %bench%/..., which csync2 2.x compares with the real path given.
    csync2_run checkfile "$run" 0 -c "$src/$target"
    csync2_run update "$run" 0 -u
    sum_last csync2-onepath csync2-checkfile csync2-update
    verify_csync2 "csync2 one-path sync (run $run)"
    log "  run $run: gosyncd $(last gosyncd-onepath)s, csync2 $(last csync2-onepath)s"
done

# What (b) does not time: csync2's audit compares databases. A file changed on a peer
# behind csync2's back (nobody ran csync2 there) is invisible to node 1's -cr and -T.
# Untimed, and last: the peer keeps its change.
"${helper[@]}" edit "$cs/peer1/etc/bench/$target" 1000
status=0
csync2_cmd node1 -cr / >"$logs/csync2-drift-check.txt" 2>&1 ||
    die "csync2 -cr failed: $(tail -n 5 "$logs/csync2-drift-check.txt")"
csync2_cmd node1 -T >"$logs/csync2-drift-test.txt" 2>&1 || status=$?
case $status in
2) drift="not seen (csync2 -T: in sync; exit 2)" ;;
0) drift="seen: $(head -n 1 "$logs/csync2-drift-test.txt")" ;;
*) die "csync2 -T failed with status $status: $(tail -n 5 "$logs/csync2-drift-test.txt")" ;;
esac
log "a file changed on csync2's peer 127.0.0.3 only: $drift"

# Idle memory: the daemons after the runs, once nothing has happened for 2 s.
sleep 2
for i in 1 2 3; do
    awk '/^VmRSS:/ { print $2 }' "/proc/${daemon_pids[i - 1]}/status" >>"$res/rss-gosyncd-idle.kb"
    awk '/^VmHWM:/ { print $2 }' "/proc/${daemon_pids[i - 1]}/status" >>"$res/rss-gosyncd-hwm.kb"
    awk '/^VmRSS:/ { print $2 }' "/proc/${csync2_pids[i - 1]}/status" >>"$res/rss-csync2-idle.kb"
done
warnings=""
for i in 1 2 3; do warnings+="$(grep -c 'WARN' "$logs/peer$i.log" || true) "; done
cerrors=""
for i in 1 2 3; do cerrors+="$(grep -ci 'error' "$logs/csync2-peer$i.log" || true) "; done

echo
"${helper[@]}" table-csync2 "$res"
echo
echo "gosyncd peer daemon warnings logged (per daemon): $warnings"
echo "gosyncd node 1 daemon warnings logged (it ran for (b2), (c2) and (d2)): $node1_warnings"
echo "csync2 daemon lines with 'error' (per daemon): $cerrors"
echo "a file changed on csync2's peer 127.0.0.3 behind its back, then node 1's -cr / and -T: $drift"
echo "load average (1/5/15 min) before the runs: $load_start; after: $(cut -d' ' -f1-3 /proc/loadavg)"
