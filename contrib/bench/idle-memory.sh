#!/usr/bin/env bash
# idle-memory.sh: the resident memory of idle daemons watching a tree, gosyncd beside
# lsyncd, in the same run, for each tree size in SIZES.
#
# For each size N:
#   * a tree of N files (bench_helper.py's generator: 320 directories, heavy-tailed sizes,
#     N KiB in all on average) copied under three roots;
#   * three gosyncd daemons on 127.0.0.2-4, each watching its own copy, all three in
#     each one's remotes (the trees are equal, so start-up finds no drift); once each has
#     compared with both peers, WAIT seconds idle, then VmRSS, RssAnon (the heap, stacks),
#     RssFile (code and libraries paged in) and VmHWM of each, from /proc;
#   * one lsyncd watching the same tree with `default.rsync` to an rsync daemon holding a
#     copy (its start-up rsync finds nothing to send), then WAIT seconds idle, the same
#     figures of lsyncd (rsync's daemon is listed beside it);
#   * between the two, node 3's daemon restarted with half of its tree moved aside: it
#     compares at its start and finds the drift, and an edit on node 1 pushed to both
#     peers makes them compare again; each gosyncd daemon's peak over those comparisons
#     (VmHWM, reset before) is listed as "node 3 lacking half of the tree".
#
#   contrib/bench/idle-memory.sh                      # 10,000 and 100,000 files
#   SIZES=10000 WAIT=10 contrib/bench/idle-memory.sh  # quicker
#   GOSYNCD_BIN=target/release/gosyncd contrib/bench/idle-memory.sh
#
# It needs bash, python3, openssl, rsync, lsyncd (installed with apt-get when missing and
# run as root) and cargo (unless GOSYNCD_BIN is set). Trees of 100,000 files take about a
# minute to write and copy; everything lives in one temporary directory, removed at the
# end (KEEP=1 keeps it).
set -euo pipefail
export LC_ALL=C

SIZES=${SIZES:-10000 100000}
WAIT=${WAIT:-20}
SEED=${SEED:-7}
KEEP=${KEEP:-0}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=contrib/bench/lib.sh
. "$here/lib.sh"

need python3 python3
need openssl openssl
need rsync rsync
need lsyncd lsyncd
need_cargo
workspace gosyncd-idle 'node*.log' 'lsyncd*.log' 'rsyncd*.out'
build

ips=(127.0.0.2 127.0.0.3 127.0.0.4)
certificate "${ips[@]}"
gport=$("${helper[@]}" freeport 19443 "${ips[@]}")
rport=$("${helper[@]}" freeport 19873 127.0.0.5)
remotes=("127.0.0.2:$gport" "127.0.0.3:$gport" "127.0.0.4:$gport")

# memory KEY PID: one line of the results: KEY VmRSS RssAnon RssFile VmHWM (KiB).
memory() {
    awk -v key="$1" '
        /^VmRSS:/ { rss = $2 } /^RssAnon:/ { anon = $2 } /^RssFile:/ { file = $2 }
        /^VmHWM:/ { hwm = $2 }
        END { print key, rss, anon, file, hwm }' "/proc/$2/status"
}

# compared LOG: whether the daemon has compared with both of its peers (found no drift,
# or drift: then it warns, and the check below stops the script).
compared() { [ "$(grep -c 'no drift with this peer\|differ from this node' "$1" 2>/dev/null || true)" -ge 2 ]; }

for n in $SIZES; do
    log "$n files: writing the tree"
    src="$work/src-$n"
    "${helper[@]}" gen "$src" "$n" $((n * 1024)) "$SEED" >/dev/null
    for i in 1 2 3; do
        mkdir -p "$work/n$n-$i/etc"
        cp -a "$src" "$work/n$n-$i/etc/bench"
        write_config "$work/n$n-$i.hcl" "${ips[i - 1]}:$gport" "$work/n$n-$i" "" "${remotes[@]}"
    done

    log "$n files: three gosyncd daemons"
    start_daemons "$work/n$n-@i@.hcl" "$logs/node$n-@i@.log"
    for ((k = 0; k < 1200; k++)); do
        all=1
        for i in 1 2 3; do compared "$logs/node$n-$i.log" || all=0; done
        [ "$all" = 1 ] && break
        sleep 0.1
    done
    [ "$all" = 1 ] || die "the daemons did not compare with their peers in 120 s"
    sleep "$WAIT"
    for i in 1 2 3; do memory "gosyncd-$n-node$i" "${pids[i - 1]}" >>"$res/memory"; done
    # A peer not listening yet when a daemon starts is expected: it compares again when
    # that peer starts and calls it.
    if grep -E ' (WARN|ERROR) ' "$logs"/node"$n"-*.log | grep -v 'cannot compare with peer' \
        >"$res/problems-$n"; then
        die "the daemons logged warnings: $(head -n 5 "$res/problems-$n")"
    fi

    # Drift: node 3 restarted without half of its tree (app10 to app19 moved aside). It
    # compares at its start and finds the drift; an edit on node 1, pushed to both
    # peers, makes them compare again. Each daemon's peak over those comparisons (VmHWM,
    # reset first) is that of comparing with a peer that lacks half of the tree.
    log "$n files: node 3 restarted without half of its tree, compared"
    stop "${pids[2]}"
    mkdir -p "$work/aside-$n"
    mv "$work/n$n-3/etc/bench"/app1? "$work/aside-$n/"
    for i in 1 2; do echo 5 >"/proc/${pids[i - 1]}/clear_refs"; done
    "$bin" -config "$work/n$n-3.hcl" >"$logs/node$n-3-drift.log" 2>&1 &
    pids[2]=$!
    wait_listening "${ips[2]}" "$gport" "${pids[2]}" "$logs/node$n-3-drift.log"
    for ((k = 0; k < 1200; k++)); do
        grep -q 'differ from this node' "$logs/node$n-3-drift.log" && break
        sleep 0.1
    done
    grep -q 'differ from this node' "$logs/node$n-3-drift.log" ||
        die "node 3 did not report its drift in 120 s"
    edited=$(find "$work/n$n-1/etc/bench/app00" -type f -print -quit)
    "${helper[@]}" edit "$edited" 1
    sleep 15
    for i in 1 2 3; do memory "drift-$n-node$i" "${pids[i - 1]}" >>"$res/memory"; done
    for pid in "${pids[@]}"; do stop "$pid"; done

    log "$n files: lsyncd"
    mkdir -p "$work/rsync-$n"
    cp -a "$src/." "$work/rsync-$n/"
    start_rsyncd "$n" 127.0.0.5 "$rport" "$work/rsync-$n"
    rsyncd_pid=$!
    start_lsyncd "lsyncd-$n" "" "$src" "rsync://127.0.0.5:$rport/node$n/"
    sleep "$WAIT"
    memory "lsyncd-$n" "$lsyncd_pid" >>"$res/memory"
    memory "rsync-daemon-$n" "$rsyncd_pid" >>"$res/memory"
    stop "$lsyncd_pid"
    stop "$rsyncd_pid"
    rm -rf "$src" "$work/rsync-$n" "$work"/n"$n"-*/etc "$work/aside-$n"
done

printf '\nIdle resident memory, MiB (%s s idle after start-up; gosyncd: %s)\n\n' "$WAIT" "$("$bin" --version)"
printf '| daemon | files | VmRSS | RssAnon | RssFile | VmHWM |\n| --- | --- | --- | --- | --- | --- |\n'
awk '{
    split($1, k, "-")
    name = k[1]
    if (k[1] == "rsync") name = "rsync --daemon"
    else if (k[1] == "gosyncd") name = "gosyncd " k[3]
    else if (k[1] == "drift") name = "gosyncd " k[3] ", node 3 lacking half of the tree"
    printf "| %s | %s | %.1f | %.1f | %.1f | %.1f |\n", \
        name, (k[1] == "rsync" ? k[3] : k[2]), $2 / 1024, $3 / 1024, $4 / 1024, $5 / 1024
}' "$res/memory"
