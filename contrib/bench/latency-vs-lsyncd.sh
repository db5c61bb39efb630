#!/usr/bin/env bash
# latency-vs-lsyncd.sh: how soon a file saved on one gosyncd node is on the other nodes
# (automatic propagation, no command run), compared with lsyncd pushing the same saves
# with rsync, on one machine over loopback; and how much memory an idle daemon watching a
# large tree holds.
#
# What it builds (all in a temporary directory, removed on exit):
#   * a tree of 10,000 small text files in 300 directories, plus the file that is saved
#     (/etc/bench/latency/haproxy.cfg, 1 kB), identical on three nodes (under each
#     node's `root`), so that the group starts in sync;
#   * one self-signed certificate made with the openssl command line, named by all three
#     tls_* keys (the original gosyncd's setup);
#   * three gosyncd daemons on 127.0.0.2, .3 and .4 (release build), each with its own
#     root and `directory "/etc/bench" {}`; every config lists all three nodes;
#   * later, two `rsync --daemon` on 127.0.0.3 and .4 (use chroot = no, modules writable,
#     pointing at nodes 2 and 3's trees) and lsyncd on node 1's tree with two
#     `sync { default.rsync }`, one per rsync daemon.
#
# What it measures:
#   1. save-to-replicated latency, gosyncd at default settings (a burst is pushed once
#      every file it wrote is closed and the 20 ms settle window has passed): SAVES
#      saves of the file on node 1; each writes new, unique content to a temporary file in
#      the same directory and renames it over the file, as editors save (SAVE_MODE=
#      overwrite rewrites the file in place instead). The clock starts just before the
#      save and stops when BOTH peers' files hold the new content. The measuring process
#      (one python process for all the saves) waits on inotify in the peers' directories
#      (and wakes every 10 ms anyway), stats the peers' files and reads a file when its
#      stat changed: it never opens a file that did not change, since an open is itself
#      an inotify event for a watcher that listens to IN_OPEN. After each replication it
#      waits GAP_MS +- 100 ms (uniformly drawn, so that the saves do not fall into step
#      with anything periodic in the daemons) before the next save, so each save is its
#      own burst. Reported: p50, p95 (nearest rank), max, min, and the first peer's p50.
#   2. the same with lsyncd default.rsync at delay = 0 (SAVES_LSYNCD0 saves: lsyncd
#      starts rsync as soon as it sees the event, with no waiting at all; it leaves
#      about 4 saves in 10 unreplicated until the next one, each counted as x after the
#      15 s timeout, which is why this run is shorter), at delay = 1
#      (SAVES_LSYNCD1 saves) and at its
#      default delay (15 s; only SAVES_LSYNCD15 saves, about 16 s each, to keep the run
#      bounded), and the ratios of the p50s (lsyncd / gosyncd);
#   3. gosyncd at debounce = "1s" (SAVES_SLOW saves), to compare with lsyncd delay = 1;
#   4. VmRSS of each gosyncd daemon watching the 10,000-file tree, read from
#      /proc/PID/status once start-up is over (the daemons together use under 2% of one
#      CPU over 3 s, or 20 s have passed: the output says which), and again after the
#      saves with VmHWM; lsyncd's for comparison. Also each daemon's CPU use over 5 s with
#      no saves (an idle watcher should use next to none);
#   5. correctness: after each save, the peers' content must be exactly what was written
#      (that is what stops the clock; a save not replicated within the timeout is counted
#      and reported), and still be, with the source untouched, after the gap (no echo, no
#      late overwrite); after each gosyncd run the three trees are compared in full, and
#      the daemons' counters (/v1/status: one save makes exactly two apply requests in the
#      group) and logged warnings/errors are shown.
#
# Run it from anywhere in the repository (it builds the release binary first):
#     contrib/bench/latency-vs-lsyncd.sh
# Settings (environment, defaults): SAVES=100 (gosyncd default)  SAVES_SLOW=30 (gosyncd
# debounce 1s)  SAVES_LSYNCD0=30 (lsyncd delay 0)  SAVES_LSYNCD1=$SAVES (lsyncd delay 1)  SAVES_LSYNCD15=6 (lsyncd default
# delay)  GAP_MS=400  SAVE_MODE=rename|overwrite  TREE_FILES=10000  TREE_DIRS=300
# LSYNCD=0 (skip lsyncd)  KEEP=1 (keep the temporary directory)  TMPDIR.
# About 10 minutes with the defaults on 2 CPUs, plus the build. Needs bash, python3
# (standard library), openssl, rsync, lsyncd and cargo; when run as root on a Debian-like
# system, missing rsync and lsyncd packages are installed with apt-get. Only loopback
# addresses are used; every process the script starts is stopped when it exits.

set -euo pipefail
export LC_ALL=C

SAVES=${SAVES:-100}
SAVES_SLOW=${SAVES_SLOW:-30}
SAVES_LSYNCD0=${SAVES_LSYNCD0:-30}
SAVES_LSYNCD1=${SAVES_LSYNCD1:-$SAVES}
SAVES_LSYNCD15=${SAVES_LSYNCD15:-6}
GAP_MS=${GAP_MS:-400}
SAVE_MODE=${SAVE_MODE:-rename}
TREE_FILES=${TREE_FILES:-10000}
TREE_DIRS=${TREE_DIRS:-300}
LSYNCD=${LSYNCD:-1}
KEEP=${KEEP:-0}
SEED=20240611

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=contrib/bench/lib.sh
. "$here/lib.sh"
lat=(python3 "$here/latency_helper.py")

case "$SAVE_MODE" in rename | overwrite) ;; *) die "SAVE_MODE must be rename or overwrite" ;; esac
for v in SAVES SAVES_SLOW SAVES_LSYNCD0 SAVES_LSYNCD1 SAVES_LSYNCD15 GAP_MS TREE_FILES TREE_DIRS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done

need python3 python3
need openssl openssl
if [ "$LSYNCD" = 1 ]; then
    need rsync rsync
    need lsyncd lsyncd
fi
need_cargo

# ------------------------------------------------------------------ workspace, cleanup

workspace gosyncd-latency '*.log'
failures=()

# --------------------------------------------------------------------------- build

build

# ---------------------------------------------------------------------------- trees

ips=(127.0.0.2 127.0.0.3 127.0.0.4)
rel=latency/haproxy.cfg
tree1="$work/node1/etc/bench"
log "creating $TREE_FILES files in $TREE_DIRS directories, the same on the three nodes"
mkdir -p "$tree1/latency"
ndirs=$("${lat[@]}" tree "$tree1" "$TREE_FILES" "$TREE_DIRS" "$SEED")
printf '# the file the benchmark saves\n' >"$tree1/$rel"
for i in 2 3; do
    mkdir -p "$work/node$i/etc"
    cp -a "$tree1" "$work/node$i/etc/bench"
done
nfiles=$(find "$tree1" -type f | wc -l)
ndirs=$(find "$tree1" -type d | wc -l)
echo "$nfiles files in $ndirs directories" >"$res/treedesc"

# ------------------------------------------------------------------ certificate, ports

certificate "${ips[@]}"

gport=$("${helper[@]}" freeport 18443 "${ips[@]}")
rport=$("${helper[@]}" freeport 18873 127.0.0.3 127.0.0.4)
[ "$gport" != "$rport" ] || die "gosyncd and rsync would share port $gport"
remotes=("127.0.0.2:$gport" "127.0.0.3:$gport" "127.0.0.4:$gport")

for i in 1 2 3; do
    write_config "$work/node$i.hcl" "${ips[i - 1]}:$gport" "$work/node$i" "" "${remotes[@]}"
    write_config "$work/node$i-1s.hcl" "${ips[i - 1]}:$gport" "$work/node$i" 1s "${remotes[@]}"
done

# ------------------------------------------------------------------------ helpers

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

peer_files=("$work/node2/etc/bench/$rel" "$work/node3/etc/bench/$rel")

# run_saves KEY N TIMEOUT_S: the timed saves on node 1; failures are recorded, not fatal.
run_saves() {
    local key=$1 n=$2 timeout=$3 load0
    load0=$(loadavg)
    log "  $n saves ($SAVE_MODE), $GAP_MS ms apart after each replication"
    "${lat[@]}" saves "$res/$key.saves" "$key" "$n" "$GAP_MS" "$timeout" "$SAVE_MODE" \
        "$tree1/$rel" "${peer_files[@]}" ||
        failures+=("$key: some saves were not replicated, or changed after replication (see above)")
    echo "$load0 / $(loadavg)" >"$res/$key.load"
}

# daemon_problems KEY: the warnings and errors the three daemons logged, and any push
# a peer logged (only node 1 is edited: a peer that pushes echoes what it received).
daemon_problems() {
    local key=$1 i lines
    for i in 1 2 3; do
        lines=$(grep -E ' (WARN|ERROR) ' "$logs/$key-node$i.log" || true)
        if [ -n "$lines" ]; then
            failures+=("$key: node $i logged $(printf '%s\n' "$lines" | wc -l) warnings/errors")
            {
                printf '%s node %s (%s) warnings/errors:\n' "$key" "$i" "${ips[i - 1]}"
                printf '%s\n' "$lines" | head -n 20 | sed 's/^/    /'
            } >>"$res/problems"
        fi
        [ "$i" != 1 ] || continue
        lines=$(grep -E '\[[-+M!]\] ' "$logs/$key-node$i.log" || true)
        if [ -n "$lines" ]; then
            failures+=("$key: node $i (a peer) pushed $(printf '%s\n' "$lines" | wc -l) changes")
            {
                printf '%s node %s (%s), a peer, pushed (first lines; the other nodes'"'"' log around the first one below):\n' \
                    "$key" "$i" "${ips[i - 1]}"
                printf '%s\n' "$lines" | head -n 6 | sed 's/^/    /'
                # The group's log lines in the 400 ms before and 100 ms after the first.
                local t
                t=$(printf '%s\n' "$lines" | head -n 1 | cut -d' ' -f1)
                local j
                for j in 1 2 3; do sed "s/^/node$j /" "$logs/$key-node$j.log"; done | sort -k2,2 |
                    awk -v t="$t" '
                        function ms(s,  a) { split(substr(s, 12, 12), a, ":"); return (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 }
                        { d = ms($2) - ms(t) } d >= -400 && d <= 100' |
                    sed 's/^/      /'
            } >>"$res/problems"
        fi
    done
}

# gosyncd_scenario KEY CONFIG_SUFFIX N: start the group, measure, check, stop it.
gosyncd_scenario() {
    local key=$1 suffix=$2 n=$3 i waited pids=()
    log "$key: starting 3 gosyncd daemons on ${ips[*]} port $gport"
    start_daemons "$work/node@i@$suffix.hcl" "$logs/$key-node@i@.log"
    waited=$("${lat[@]}" idle 3 20 "${pids[@]}")
    log "  idle after start-up (${waited}s)"
    if [ "$key" = gosyncd-default ]; then
        for i in 1 2 3; do "${lat[@]}" rss "node$i" "${pids[i - 1]}" >"$res/rss-node$i.idle"; done
    fi
    "${lat[@]}" cpu 5 "${pids[@]}" >"$res/cpu-$key"
    log "  CPU use with no saves (% of one CPU, per daemon): $(cat "$res/cpu-$key")"
    run_saves "$key" "$n" 10
    if [ "$key" = gosyncd-default ]; then
        for i in 1 2 3; do "${lat[@]}" rss "node$i" "${pids[i - 1]}" >"$res/rss-node$i.after"; done
    fi
    sleep 1 # let the peers' watchers see their own writes (and push nothing)
    "${lat[@]}" status "$tls/gosyncd.crt" "$tls/gosyncd.key" "${remotes[@]}" >"$res/status-$key"
    # One save on node 1 makes exactly two apply requests in the group, one per peer.
    awk -v n="$n" '
        NR == 1 { ok = $2 == "pushes=" 2 * n && $3 == "apply_requests=0" }
        NR > 1 { ok = ok && $2 == "pushes=0" && $3 == "apply_requests=" n }
        { ok = ok && $5 == "conflicts_refused=0" && $6 == "conflicts_reported=0" }
        END { exit !(ok && NR == 3) }' "$res/status-$key" ||
        failures+=("$key: counters differ from 2 apply requests per save, none from the peers, no conflicts ($n saves; see the counters above)")
    for i in 1 2 3; do stop "${pids[i - 1]}"; done
    "${helper[@]}" verify "$tree1" "$work/node2/etc/bench" "$work/node3/etc/bench" \
        2>"$logs/$key-verify.txt" ||
        failures+=("$key: the trees differ after the run: $(head -n 5 "$logs/$key-verify.txt")")
    daemon_problems "$key"
}

# lsyncd_scenario KEY DELAY(or "") N TIMEOUT_S: lsyncd to the two rsync daemons.
lsyncd_scenario() {
    local key=$1 delay=$2 n=$3 timeout=$4 pid waited
    # Start-up: one full rsync per target (the trees are already equal).
    start_lsyncd "$key" "$delay" "$tree1" \
        "rsync://${ips[1]}:$rport/node2/" "rsync://${ips[2]}:$rport/node3/"
    pid=$lsyncd_pid
    waited=$("${lat[@]}" idle 3 20 "$pid")
    log "  idle after start-up (${waited}s)"
    [ "$key" != lsyncd-1 ] || "${lat[@]}" rss lsyncd "$pid" >"$res/rss-lsyncd.idle"
    "${lat[@]}" cpu 5 "$pid" >"$res/cpu-$key"
    run_saves "$key" "$n" "$timeout"
    [ "$key" != lsyncd-1 ] || "${lat[@]}" rss lsyncd "$pid" >"$res/rss-lsyncd.after"
    stop "$pid"
    if grep -qE 'Error|error' "$logs/$key.log"; then
        {
            printf '%s log errors:\n' "$key"
            grep -E 'Error|error' "$logs/$key.log" | head -n 10 | sed 's/^/    /'
        } >>"$res/problems"
    fi
}

# ---------------------------------------------------------------------- scenarios

lsyncd_version=""
[ "$LSYNCD" != 1 ] || lsyncd_version="lsyncd $(lsyncd --version 2>/dev/null | awk '/Version/ { print $2 }')"
printf '%s\n' "$("$bin" --version)${lsyncd_version:+ vs $lsyncd_version}:" \
    "node 1 (127.0.0.2) saves, 2 peers (127.0.0.3-4) receive;" \
    "$(cat "$res/treedesc") watched on each node; saves by $SAVE_MODE, ${GAP_MS} ms apart;" \
    "$(nproc) CPUs" | paste -sd' ' >"$res/title"
load_start=$(loadavg)

gosyncd_scenario gosyncd-default "" "$SAVES"
gosyncd_scenario gosyncd-1s -1s "$SAVES_SLOW"

if [ "$LSYNCD" = 1 ]; then
    for k in 2 3; do
        start_rsyncd "$k" "${ips[k - 1]}" "$rport" "$work/node$k/etc/bench"
    done
    lsyncd_scenario lsyncd-0 0 "$SAVES_LSYNCD0" 15
    lsyncd_scenario lsyncd-1 1 "$SAVES_LSYNCD1" 15
    lsyncd_scenario lsyncd-default "" "$SAVES_LSYNCD15" 45
fi

echo
"${lat[@]}" table "$res"
echo
echo "load average (1/5/15 min) before the runs: $load_start; after: $(loadavg)"
if [ -s "$res/problems" ]; then
    echo
    cat "$res/problems"
fi
if [ "${#failures[@]}" -gt 0 ]; then
    echo
    printf 'PROBLEM: %s\n' "${failures[@]}"
    exit 1
fi
echo "correctness: every save reached both peers intact; the gosyncd trees matched after each run"
