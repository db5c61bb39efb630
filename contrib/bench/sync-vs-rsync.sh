#!/usr/bin/env bash
# sync-vs-rsync.sh: how long `gosyncd sync` takes to push a directory to three peers,
# compared with rsync doing the same work, on one machine over loopback.
#
# What it builds (all in a temporary directory, removed on exit):
#   * a deterministic tree of 10,000 files, about 100 MB, in 320 directories: node 1's
#     /etc/bench (under its `root`);
#   * one self-signed certificate made with the openssl command line, named by all three
#     tls_* keys (the original gosyncd's setup);
#   * node 1 (the sender, 127.0.0.2) and three peer daemons on 127.0.0.3, .4 and .5;
#   * three rsync daemons on the same addresses, one module per peer.
#
# What it measures, RUNS times each (median and min of wall-clock seconds):
#   (a) initial sync to three empty peers  gosyncd sync       | rsync -a --delete
#       and again with node 1's own daemon running, as every node of a group runs one:
#       the command then takes node 1's tree from the daemon, which keeps its hashes
#   (b) no-change audit                    gosyncd sync -dry  | rsync -a --delete -n -i
#   (c) one file changed, then sync        gosyncd sync       | rsync -a --delete
# gosyncd handles its peers concurrently, so the three rsyncs run concurrently too; their
# sequential time is shown for reference, as are rsync --fsync (gosyncd makes what it
# writes durable), rsync -c (gosyncd hashes every file) and a gosyncd dry run against one
# peer (the sender's local scan and one manifest). It also reports the machine's CPU time
# during each timed run (/proc/stat, all processes), the peak RSS of the gosyncd sync
# client (/usr/bin/time) and of the peer daemons (VmHWM). Every gosyncd and rsync run is
# verified: each peer's tree must match the source (paths, types, modes, owners, sizes,
# SHA-256 of contents); the script fails loudly otherwise. The gosyncd peers' trees are
# emptied before each initial sync with their daemons stopped (see empty_peers below),
# so their VmHWM covers the last initial sync, (b) and (c). Each timed run starts on a
# quiet machine (see settle below): the peer daemons' comparison with each other after
# a push is reported apart, not charged to the run that follows it.
#
# Run it from anywhere in the repository (it builds the release binary first):
#     contrib/bench/sync-vs-rsync.sh
# Settings (environment): RUNS=5  FILES=10000  TOTAL_MB=100  KEEP=1 (keep the temporary
# directory)  TMPDIR (where that directory goes; /dev/shm shows the figures without any
# fsync cost). Needs about 6 GB there with the defaults: emptied peer trees are moved
# aside, not deleted, until exit, except on tmpfs (see empty() below). Needs bash, python3, openssl,
# rsync and /usr/bin/time; when run as root on a Debian-like system, missing rsync/time
# are installed with apt-get. Only loopback addresses are used. Takes several minutes.

set -euo pipefail
export LC_ALL=C

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
need rsync rsync
need /usr/bin/time time
need_cargo

# ------------------------------------------------------------------ workspace, cleanup

daemon_pids=()

# end_jobs: every process this script started is one of its background jobs: end them
# by id.
end_jobs() {
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    for pid in $(jobs -p); do wait "$pid" 2>/dev/null || true; done
}
workspace gosyncd-bench 'peer*.log' 'rsyncd*.log'

# --------------------------------------------------------------------------- build

build

# ---------------------------------------------------------------------------- tree

src="$work/node1/etc/bench"
log "creating $FILES files (${TOTAL_MB} MB) in $src"
mkdir -p "$src"
target=$("${helper[@]}" gen "$src" "$FILES" $((TOTAL_MB * 1000 * 1000)) "$SEED")
[ -n "$target" ] && [ -f "$src/$target" ] || die "the generator named no file to edit"
ndirs=$(find "$src" -type d | wc -l)
nfiles=$(find "$src" -type f | wc -l)
bytes=$(find "$src" -type f -printf '%s\n' | awk '{ n += $1 } END { print n }')

peers=(127.0.0.3 127.0.0.4 127.0.0.5)
for i in 1 2 3; do
    mkdir -p "$work/peer$i/etc/bench" "$work/rsync/peer$i"
done

# ------------------------------------------------------------------ certificate, ports

certificate 127.0.0.2 "${peers[@]}"

gport=$("${helper[@]}" freeport 18443 127.0.0.2 "${peers[@]}")
rport=$("${helper[@]}" freeport 18873 "${peers[@]}")
[ "$gport" != "$rport" ] || die "gosyncd and rsync would share port $gport"

# ---------------------------------------------------------------------------- configs

remotes=("127.0.0.2:$gport" "127.0.0.3:$gport" "127.0.0.4:$gport" "127.0.0.5:$gport")
write_config "$work/node1.hcl" "127.0.0.2:$gport" "$work/node1" "" "${remotes[@]}"
for i in 1 2 3; do
    write_config "$work/peer$i.hcl" "${peers[i - 1]}:$gport" "$work/peer$i" "" "${remotes[@]}"
done
# The same sender with one peer: a dry run with it is the local scan plus one peer's
# manifest, the floor under the three-peer audit.
write_config "$work/node1-onepeer.hcl" "127.0.0.2:$gport" "$work/node1" "" \
    "127.0.0.2:$gport" "127.0.0.3:$gport"

for i in 1 2 3; do
    write_rsyncd_conf "$i" "peer$i" "$work/rsync/peer$i"
done

# ------------------------------------------------------------------------ daemons

# start_peer I: gosyncd peer daemon I, a background job (its id in daemon_pids), its log
# appended to (a peer is started again before each initial sync: see empty_peers).
peer_starts=0
start_peer() {
    "$bin" -config "$work/peer$1.hcl" >>"$logs/peer$1.log" 2>&1 &
    daemon_pids[$1 - 1]=$!
}

# wait_started I: until peer daemon I is listening and has scanned its tree (its
# start-up line, once per start), at most 30 s.
wait_started() {
    local i=$1 k
    wait_listening "${peers[i - 1]}" "$gport" "${daemon_pids[i - 1]}" "$logs/peer$i.log"
    for ((k = 0; k < 300; k++)); do
        [ "$(grep -c 'daemon listening and watching' "$logs/peer$i.log" || true)" -lt \
            "$peer_starts" ] || return 0
        kill -0 "${daemon_pids[i - 1]}" 2>/dev/null ||
            die "peer $i exited: $(tail -n 5 "$logs/peer$i.log")"
        sleep 0.1
    done
    die "peer $i did not start in 30 s"
}

log "starting 3 gosyncd peers on port $gport and 3 rsync daemons on port $rport"
peer_starts=1
for i in 1 2 3; do
    start_peer "$i"
    rsync --daemon --no-detach --config="$work/rsyncd$i.conf" \
        --address="${peers[i - 1]}" --port="$rport" >"$logs/rsyncd$i.out" 2>&1 &
    rsync_pid=$!
    wait_started "$i"
    wait_listening "${peers[i - 1]}" "$rport" "$rsync_pid" "$logs/rsyncd$i.out"
done

# ------------------------------------------------------------------------ helpers

# record KEY T0 T1: append the elapsed seconds to KEY's results.
record() {
    awk -v a="$2" -v b="$3" 'BEGIN { printf "%.4f\n", b - a }' >>"$res/$1.times"
}

# busy_ticks: the machine's CPU time so far, all CPUs and processes, in clock ticks
# (/proc/stat: user, nice, system, irq, softirq and steal).
busy_ticks() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}
ticks_per_second=$(getconf CLK_TCK)

# record_cpu KEY T0 T1: appends the CPU seconds between busy_ticks T0 and T1 to KEY's.
record_cpu() {
    awk -v a="$2" -v b="$3" -v hz="$ticks_per_second" \
        'BEGIN { printf "%.2f\n", (b - a) / hz }' >>"$res/$1.cpu"
}

# settle [KEY]: waits (30 s at most) until the machine is quiet: under 5% of one CPU
# over half a second. The peer daemons compare their trees with each other 2 s after a
# push to them ends (anti-entropy); run after gosyncd's initial sync, that work used to
# fall inside the rsync run that followed and was charged to rsync. With KEY, the CPU
# seconds spent while waiting are appended to KEY's `.after` results.
settle() {
    local c0 c1 before deadline=$((SECONDS + 30))
    c0=$(busy_ticks)
    sleep 2.5 # the daemons' comparison starts 2 s after the last push
    while [ "$SECONDS" -lt "$deadline" ]; do
        before=$(busy_ticks)
        sleep 0.5
        [ $(($(busy_ticks) - before)) -lt $((ticks_per_second / 40)) ] && break
    done
    c1=$(busy_ticks)
    if [ -n "${1:-}" ]; then
        awk -v a="$c0" -v b="$c1" -v hz="$ticks_per_second" \
            'BEGIN { printf "%.2f\n", (b - a) / hz }' >>"$res/$1.after"
    fi
}

# max_rss FILE: the last line /usr/bin/time -f %M wrote (kilobytes).
max_rss() { tail -n 1 "$1"; }

# empty DIR...: move everything below each DIR aside (into $work/trash), keep DIR.
# Not deleted: freeing tens of thousands of inodes just before a run slows the file
# creations that follow on some filesystems (ext4 without a journal skips every inode
# freed in the last minutes, one lookup each), which would be charged to the next tool.
# On tmpfs, which has no such cost but a limit of inodes that the trees of FILES=100000
# would exceed, they are deleted.
empty() {
    local d
    for d in "$@"; do
        if [ "$work_fs" = tmpfs ]; then
            find "$d" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
            continue
        fi
        trash_n=$((trash_n + 1))
        mkdir "$work/trash/$trash_n"
        find "$d" -mindepth 1 -maxdepth 1 -exec mv -t "$work/trash/$trash_n" {} +
    done
}
trash_n=0
mkdir "$work/trash"
work_fs=$(stat -f -c %T "$work")

# empty_peers: empty the gosyncd peers' trees with their daemons stopped, then start the
# daemons again. Emptied under its running daemon, a peer's tree is a local change that
# its watcher pushes to the other nodes: deletions that could reach another peer after
# node 1's timed sync had filled it (seen: a peer lost the 2,320 paths it had just
# received), pushes charged to the timed run, and deletions each peer kept for node 1,
# which runs no daemon. A daemon that stops with changes not delivered is a failure.
empty_peers() {
    local i
    for i in 1 2 3; do stop "${daemon_pids[i - 1]}"; done
    if grep -q 'not delivered' "$logs"/peer?.log; then
        die "a peer stopped with changes not delivered: $(grep -h -m 1 'not delivered' "$logs"/peer?.log)"
    fi
    empty "${gosyncd_dirs[@]}"
    peer_starts=$((peer_starts + 1))
    for i in 1 2 3; do start_peer "$i"; done
    for i in 1 2 3; do wait_started "$i"; done
}

gosyncd_dirs=("$work/peer1/etc/bench" "$work/peer2/etc/bench" "$work/peer3/etc/bench")
rsync_dirs=("$work/rsync/peer1" "$work/rsync/peer2" "$work/rsync/peer3")

# verify WHAT DIR...: every DIR must equal the source tree.
verify() {
    local what=$1
    shift
    "${helper[@]}" verify "$src" "$@" 2>"$logs/verify.err" || {
        cat "$logs/verify.err" >&2
        die "$what: a peer differs from the source"
    }
    if [ -s "$logs/verify.err" ]; then
        sed 's/^/[bench]   /' "$logs/verify.err" | sort -u | head -n 3 >&2
    fi
}

# gosyncd_run KEY RUN CONFIG ARG...: one timed `gosyncd -config CONFIG ARG...`.
gosyncd_run() {
    local key=$1 run=$2 config=$3
    shift 3
    local out="$logs/gosyncd-$key-$run" status=0 t0 t1 c0 c1
    settle
    sync # flush earlier writes so that they are not charged to this run
    c0=$(busy_ticks)
    t0=$EPOCHREALTIME
    /usr/bin/time -f %M -o "$out.rss" "$bin" -config "$config" "$@" >"$out.out" 2>"$out.err" ||
        status=$?
    t1=$EPOCHREALTIME
    c1=$(busy_ticks)
    if [ "$status" -ne 0 ]; then
        printf '[bench] stderr of gosyncd %s:\n' "$*" >&2
        tail -n 20 "$out.err" >&2
        printf '[bench] stdout (last lines):\n' >&2
        tail -n 5 "$out.out" >&2
        die "gosyncd $* exited with status $status (scenario $key, run $run)"
    fi
    record "gosyncd-$key" "$t0" "$t1"
    record_cpu "gosyncd-$key" "$c0" "$c1"
    max_rss "$out.rss" >>"$res/rss-gosyncd-$key.kb"
}

# rsync_run KEY RUN conc|seq ARG...: one timed push to the three rsync daemons, the three
# rsyncs concurrently or one after the other.
rsync_run() {
    local key=$1 run=$2 mode=$3
    shift 3
    local out="$logs/$key-$run" status=0 i t0 t1 c0 c1 pids=()
    settle
    sync
    c0=$(busy_ticks)
    t0=$EPOCHREALTIME
    for i in 1 2 3; do
        local cmd=(/usr/bin/time -f %M -o "$out-$i.rss"
            rsync -a --delete "$@" "$src/" "rsync://${peers[i - 1]}:$rport/peer$i/")
        if [ "$mode" = conc ]; then
            "${cmd[@]}" >"$out-$i.out" 2>"$out-$i.err" &
            pids+=($!)
        else
            "${cmd[@]}" >"$out-$i.out" 2>"$out-$i.err" || status=$?
        fi
    done
    for i in "${pids[@]}"; do wait "$i" || status=$?; done
    t1=$EPOCHREALTIME
    c1=$(busy_ticks)
    if [ "$status" -ne 0 ]; then
        cat "$out"-*.err >&2
        die "rsync $* failed with status $status (scenario $key, run $run)"
    fi
    record "$key" "$t0" "$t1"
    record_cpu "$key" "$c0" "$c1"
    [ "$key" != rsync-initial ] || max_rss "$out-1.rss" >>"$res/rss-rsync-initial.kb"
}

# ---------------------------------------------------------------------- scenarios

printf '%s\n' "$("$bin" --version) vs $(rsync --version | awk 'NR == 1 { print $1, $3 }'):" \
    "$nfiles files in $ndirs directories, $(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}') MB;" \
    "1 sender (127.0.0.2) -> 3 peers (127.0.0.3-5); $RUNS runs each; $(nproc) CPUs" |
    paste -sd' ' >"$res/title"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# with_node1_daemon RUN: the initial sync again, node 1's own daemon running (started
# after the peers, stopped after the run; its VmHWM kept). Both ends of the group then
# compare at the daemons' starts: drift is logged, nothing is pushed.
with_node1_daemon() {
    local run=$1 pid
    empty_peers
    "$bin" -config "$work/node1.hcl" >>"$logs/node1.log" 2>&1 &
    pid=$!
    wait_listening 127.0.0.2 "$gport" "$pid" "$logs/node1.log"
    gosyncd_run beside-initial "$run" "$work/node1.hcl" sync
    settle gosyncd-beside-initial
    verify "gosyncd initial sync beside node 1's daemon (run $run)" "${gosyncd_dirs[@]}"
    awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" >>"$res/rss-node1-daemon.kb"
    for i in 1 2 3; do
        awk '/^VmHWM:/ { print $2 }' "/proc/${daemon_pids[i - 1]}/status" >>"$res/rss-peers-beside.kb"
    done
    stop "$pid"
}

log "(a) initial sync to 3 empty peers, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    empty_peers
    gosyncd_run initial "$run" "$work/node1.hcl" sync
    settle gosyncd-initial
    added=$(grep -c '\[+\]' "$logs/gosyncd-initial-$run.out" || true)
    verify "gosyncd initial sync (run $run)" "${gosyncd_dirs[@]}"

    empty "${rsync_dirs[@]}"
    rsync_run rsync-initial "$run" conc
    verify "rsync initial copy (run $run)" "${rsync_dirs[@]}"
    empty "${rsync_dirs[@]}"
    rsync_run rsyncseq-initial "$run" seq
    verify "rsync sequential initial copy (run $run)" "${rsync_dirs[@]}"
    empty "${rsync_dirs[@]}"
    rsync_run rsyncfsync-initial "$run" conc --fsync
    verify "rsync --fsync initial copy (run $run)" "${rsync_dirs[@]}"
    with_node1_daemon "$run"
    log "  run $run: gosyncd $(tail -n 1 "$res/gosyncd-initial.times")s ($added paths added)," \
        "beside node 1's daemon $(tail -n 1 "$res/gosyncd-beside-initial.times")s," \
        "rsync $(tail -n 1 "$res/rsync-initial.times")s"
done
# The peers' VmHWM from here on: (b) and (c), and the last initial sync without node 1's
# daemon (the one with it makes the peers compare their empty trees with node 1's at
# their start, which is not part of a sync).
empty_peers
gosyncd_run initial "$((RUNS + 1))" "$work/node1.hcl" sync
settle gosyncd-initial
verify "gosyncd initial sync (one run more)" "${gosyncd_dirs[@]}"

log "(b) no-change audit, $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    # --exit-code: exit 1 if the dry run finds anything to change (a failure here).
    gosyncd_run nochange "$run" "$work/node1.hcl" sync -dry --exit-code
    verify "gosyncd dry run (run $run)" "${gosyncd_dirs[@]}"
    rsync_run rsync-nochange "$run" conc -n -i
    rsync_run rsyncseq-nochange "$run" seq -n -i
    rsync_run rsyncsum-nochange "$run" conc -n -i -c
    if [ -s "$logs/rsync-nochange-$run-1.out" ]; then
        log "  note: rsync -n -i listed changes: $(head -n 3 "$logs/rsync-nochange-$run-1.out")"
    fi
    gosyncd_run onepeer "$run" "$work/node1-onepeer.hcl" sync -dry
    log "  run $run: gosyncd $(tail -n 1 "$res/gosyncd-nochange.times")s," \
        "rsync $(tail -n 1 "$res/rsync-nochange.times")s," \
        "against one peer $(tail -n 1 "$res/gosyncd-onepeer.times")s"
done

log "(c) one file changed ($target), $RUNS runs"
for ((run = 1; run <= RUNS; run++)); do
    "${helper[@]}" edit "$src/$target" $((2 * run))
    gosyncd_run onefile "$run" "$work/node1.hcl" sync
    updated=$(grep -c '\[M\]' "$logs/gosyncd-onefile-$run.out" || true)
    [ "$updated" = 3 ] || die "gosyncd reported $updated updates for one file on 3 peers"
    verify "gosyncd one-file sync (run $run)" "${gosyncd_dirs[@]}"
    rsync_run rsync-onefile "$run" conc
    verify "rsync one-file copy (run $run)" "${rsync_dirs[@]}"
    # A second edit for the sequential reference; gosyncd's next run still sees one file.
    "${helper[@]}" edit "$src/$target" $((2 * run + 1))
    rsync_run rsyncseq-onefile "$run" seq
    verify "rsync sequential one-file copy (run $run)" "${rsync_dirs[@]}"
    log "  run $run: gosyncd $(tail -n 1 "$res/gosyncd-onefile.times")s," \
        "rsync $(tail -n 1 "$res/rsync-onefile.times")s"
done

for i in 1 2 3; do
    awk '/^VmHWM:/ { print $2 }' "/proc/${daemon_pids[i - 1]}/status" >"$res/rss-daemon-$i.kb"
done
warnings="" refused=""
for i in 1 2 3; do
    warnings+="$(grep -c 'WARN' "$logs/peer$i.log" || true) "
    refused+="$(grep -c 'WARN.*cannot compare with peer' "$logs/peer$i.log" || true) "
done

echo
"${helper[@]}" table "$res"
echo
echo "peer daemon warnings logged (per daemon, over its $peer_starts starts): $warnings"
echo "  of which 'cannot compare with peer' (at a start: node 1 runs no daemon, and the" \
    "other peers may not listen yet): $refused"
echo "load average (1/5/15 min) before the runs: $load_start; after: $(cut -d' ' -f1-3 /proc/loadavg)"
