#!/usr/bin/env bash
# checkout-burst.sh: a `git checkout` that changes a thousand files at once in a watched
# directory must reach the other gosyncd nodes as ONE push per peer (one apply request
# each) carrying the final content, and quickly; compared with lsyncd pushing the same
# checkouts with rsync, on one machine over loopback.
#
# What it builds (all in a temporary directory, removed on exit):
#   * a tree of 10,000 small text files in 300 directories, node 1's /etc/bench (under its
#     `root`), made a git work tree whose git directory lives outside the watched
#     directory (git --git-dir=$work/repo.git --work-tree=...), so .git never travels;
#     committed as branch A. Then CHANGED files rewritten, DELETED files removed and
#     CREATED files added (NEW_DIR of them in a new directory, which a checkout of B
#     creates and one of A deletes), committed as branch B, and A checked out again;
#   * the same tree (branch A) copied to nodes 2 and 3 before anything starts, so that the
#     group starts in sync;
#   * one self-signed certificate made with the openssl command line, named by all three
#     tls_* keys (the original gosyncd's setup);
#   * three gosyncd daemons on 127.0.0.2, .3 and .4 (release build) at default settings
#     (settle window 20ms), each with its own root and `directory "/etc/bench" {}`; every
#     config lists all three nodes;
#   * later, two `rsync --daemon` on 127.0.0.3 and .4 (use chroot = no, modules writable,
#     pointing at nodes 2 and 3's trees) and lsyncd on node 1's tree with two
#     `sync { default.rsync, delay = 1 }`, one per rsync daemon.
#
# What it measures:
#   1. gosyncd: CHECKOUTS checkouts on node 1, alternately B and A. The clock starts just
#      before `git checkout -q BRANCH` and stops when BOTH peers hold, for every path that
#      differs between A and B (about 1,100: files and the new directory), what the branch
#      has: content and type, or absence. One python process runs all the checkouts; it
#      polls the peers every 10 ms with lstat and reads a file only when its lstat changed.
#      Then it waits until the group is quiet (the daemons' /v1/status counters unchanged
#      for 1 s), takes the counters' difference and compares the changed paths again on
#      the three nodes, modes included. Reported per checkout and summarised: git's own
#      time, the time until the first changed path lands on a peer, the time to
#      replicated (median, max, min; the first peer's median), the apply requests in the
#      group (expected exactly 2: one per peer, both from node 1), the operations each
#      peer applied (expected: the number of changed paths).
#      At start-up, the daemons must push nothing (the counters stay at zero); after the
#      checkouts, the three trees are compared in full (paths, types, modes, owners,
#      sizes, SHA-256).
#   2. the same checkouts with lsyncd (delay = 1) once the gosyncd daemons are stopped;
#      its rsync runs per checkout are counted from its log; the ratio of the medians of
#      the times to replicated (lsyncd / gosyncd).
# A checkout that took more than 2 apply requests, replicated content that differs, a
# checkout not replicated within the timeout (30 s, lsyncd 60 s), a daemon warning or a
# tree that differs at the end is a FAIL line, and the script exits 1.
#
# Run it from anywhere in the repository (it builds the release binary first):
#     contrib/bench/checkout-burst.sh
# Settings (environment, defaults): CHECKOUTS=20  CHANGED=1000 (files rewritten)
# CREATED=50  DELETED=50  NEW_DIR=10 (0: no new directory)  TREE_FILES=10000
# TREE_DIRS=300  LSYNCD=0 (skip lsyncd)  KEEP=1 (keep the temporary directory)  TMPDIR.
# About 2 minutes with the defaults on 2 CPUs, plus the build. Needs bash, python3
# (standard library), git, openssl, rsync, lsyncd and cargo; when run as root on a
# Debian-like system, missing git, rsync and lsyncd packages are installed with apt-get.
# Only loopback addresses are used; every process the script starts is stopped when it
# exits.

set -euo pipefail
export LC_ALL=C

CHECKOUTS=${CHECKOUTS:-20}
CHANGED=${CHANGED:-1000}
CREATED=${CREATED:-50}
DELETED=${DELETED:-50}
NEW_DIR=${NEW_DIR:-10}
TREE_FILES=${TREE_FILES:-10000}
TREE_DIRS=${TREE_DIRS:-300}
LSYNCD=${LSYNCD:-1}
KEEP=${KEEP:-0}
SEED=20240611

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=contrib/bench/lib.sh
. "$here/lib.sh"
lat=(python3 "$here/latency_helper.py")
co=(python3 "$here/checkout_helper.py")

for v in CHECKOUTS CHANGED CREATED DELETED NEW_DIR TREE_FILES TREE_DIRS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
[ "$CHECKOUTS" -ge 1 ] || die "CHECKOUTS must be at least 1"
[ $((CHANGED + CREATED + DELETED)) -ge 1 ] || die "branch B must differ from branch A"

need python3 python3
need openssl openssl
need git git
if [ "$LSYNCD" = 1 ]; then
    need rsync rsync
    need lsyncd lsyncd
fi
need_cargo

# git as the benchmark runs it: no user or system configuration, a fixed identity.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

# ------------------------------------------------------------------ workspace, cleanup

workspace gosyncd-checkout '*.log'
failures=()

# --------------------------------------------------------------------------- build

build

# ---------------------------------------------------------------------------- trees

ips=(127.0.0.2 127.0.0.3 127.0.0.4)
tree1="$work/node1/etc/bench"
gitdir="$work/repo.git"
g() { git --git-dir="$gitdir" --work-tree="$tree1" "$@"; }

log "creating $TREE_FILES files in $TREE_DIRS directories; branch A, then branch B"
mkdir -p "$tree1"
"${lat[@]}" tree "$tree1" "$TREE_FILES" "$TREE_DIRS" "$SEED" >/dev/null
git init -q --bare "$gitdir"
git --git-dir="$gitdir" config core.bare false
git --git-dir="$gitdir" symbolic-ref HEAD refs/heads/A
g add -A
g commit -q -m "branch A"
g checkout -q -b B
"${co[@]}" mutate "$tree1" "$CHANGED" "$CREATED" "$DELETED" "$NEW_DIR" "$SEED"
g add -A
g commit -q -m "branch B"
"${co[@]}" manifest "$tree1" "$work/B.json"
g checkout -q A
"${co[@]}" manifest "$tree1" "$work/A.json"
[ -z "$(g status --porcelain)" ] || die "node 1's work tree is not clean after checking out A"
[ ! -e "$tree1/.git" ] || die "a .git appeared in the watched directory"
nchanged=$(g diff --name-only --no-renames A B | wc -l)
for i in 2 3; do
    mkdir -p "$work/node$i/etc"
    cp -a "$tree1" "$work/node$i/etc/bench"
done
nfiles=$(find "$tree1" -type f | wc -l)
ndirs=$(find "$tree1" -type d | wc -l)

# ------------------------------------------------------------------ certificate, ports

certificate "${ips[@]}"

gport=$("${helper[@]}" freeport 18443 "${ips[@]}")
rport=$("${helper[@]}" freeport 18873 127.0.0.3 127.0.0.4)
[ "$gport" != "$rport" ] || die "gosyncd and rsync would share port $gport"
remotes=("127.0.0.2:$gport" "127.0.0.3:$gport" "127.0.0.4:$gport")

for i in 1 2 3; do
    write_config "$work/node$i.hcl" "${ips[i - 1]}:$gport" "$work/node$i" "" "${remotes[@]}"
done

# ------------------------------------------------------------------------ helpers

peer_trees=("$work/node2/etc/bench" "$work/node3/etc/bench")

# run_checkouts KEY TIMEOUT_S COUNTERS...: the timed checkouts on node 1; failures are
# recorded, not fatal.
run_checkouts() {
    local key=$1 timeout=$2
    shift 2
    log "  $CHECKOUTS checkouts, alternately B and A"
    local line
    "${co[@]}" checkouts "$res/$key.checkouts" "$key" "$CHECKOUTS" "$timeout" 1 \
        "$gitdir" "$tree1" "$work/A.json" "$work/B.json" "${peer_trees[@]}" "$@" && return
    if [ -s "$res/$key.checkouts.fail" ]; then
        while IFS= read -r line; do failures+=("$key: $line"); done <"$res/$key.checkouts.fail"
    else
        failures+=("$key: the checkouts stopped (see above)")
    fi
}

# counters KEY: the three daemons' counters, one line each, into $res/status-KEY.
counters() {
    "${co[@]}" status "$tls/gosyncd.crt" "$tls/gosyncd.key" "${remotes[@]}" >"$res/status-$1"
}

# daemon_problems: the warnings and errors the three daemons logged.
daemon_problems() {
    local i lines
    for i in 1 2 3; do
        lines=$(grep -E ' (WARN|ERROR) ' "$logs/gosyncd-node$i.log" || true)
        [ -n "$lines" ] || continue
        failures+=("gosyncd: node $i logged $(printf '%s\n' "$lines" | wc -l) warnings/errors")
        {
            printf 'gosyncd node %s (%s) warnings/errors:\n' "$i" "${ips[i - 1]}"
            printf '%s\n' "$lines" | head -n 20 | sed 's/^/    /'
        } >>"$res/problems"
    done
}

# verify KEY: the three trees compared in full.
verify() {
    "${helper[@]}" verify "$tree1" "${peer_trees[@]}" 2>"$logs/$1-verify.txt" ||
        failures+=("$1: the trees differ after the checkouts: $(head -n 5 "$logs/$1-verify.txt")")
    local verdict=identical
    ! grep -q 'VERIFY FAILED' "$logs/$1-verify.txt" || verdict=differ
    echo "$1: $verdict" >>"$res/verify"
}

# ---------------------------------------------------------------------- scenarios

lsyncd_version=""
[ "$LSYNCD" != 1 ] || lsyncd_version="lsyncd $(lsyncd --version 2>/dev/null | awk '/Version/ { print $2 }')"
printf '%s\n' "$("$bin" --version)${lsyncd_version:+ vs $lsyncd_version}:" \
    "node 1 (127.0.0.2) checks out, 2 peers (127.0.0.3-4) receive;" \
    "$nfiles files in $ndirs directories watched on each node; each checkout changes $nchanged files;" \
    "$(nproc) CPUs" | paste -sd' ' >"$res/title"

log "gosyncd: starting 3 daemons on ${ips[*]} port $gport"
start_daemons "$work/node@i@.hcl" "$logs/gosyncd-node@i@.log"
waited=$("${lat[@]}" idle 3 20 "${pids[@]}")
log "  idle after start-up (${waited}s)"
counters start
awk 'NF != 6 || $2 != "pushes=0" || $3 != "apply_requests=0" || $4 != "applied=0" { bad = 1 }
     END { exit bad || NR != 3 }' "$res/status-start" ||
    failures+=("gosyncd: start-up was not clean (counters: $(paste -sd';' "$res/status-start"))")
run_checkouts gosyncd 30 status "$tls/gosyncd.crt" "$tls/gosyncd.key" "${remotes[@]}"
counters end
# Over the whole run: node 1 pushed twice per checkout, each peer received one apply
# request per checkout and pushed nothing, no conflicts.
awk -v n="$CHECKOUTS" '
    NR == 1 { ok = $2 == "pushes=" 2 * n && $3 == "apply_requests=0" }
    NR > 1 { ok = ok && $2 == "pushes=0" && $3 == "apply_requests=" n }
    { ok = ok && $5 == "conflicts_refused=0" && $6 == "conflicts_reported=0" }
    END { exit !(ok && NR == 3) }' "$res/status-end" ||
    failures+=("gosyncd: counters differ from 2 apply requests per checkout, none from the peers, no conflicts ($CHECKOUTS checkouts; see the counters below)")
for i in 1 2 3; do stop "${pids[i - 1]}"; done
verify gosyncd
daemon_problems

if [ "$LSYNCD" = 1 ]; then
    for k in 2 3; do
        start_rsyncd "$k" "${ips[k - 1]}" "$rport" "$work/node$k/etc/bench"
    done
    # Start-up: one full rsync per target (the trees are already equal).
    start_lsyncd lsyncd 1 "$tree1" \
        "rsync://${ips[1]}:$rport/node2/" "rsync://${ips[2]}:$rport/node3/"
    waited=$("${lat[@]}" idle 3 20 "$lsyncd_pid")
    log "  idle after start-up (${waited}s)"
    run_checkouts lsyncd 60 lsyncd "$logs/lsyncd.log"
    stop "$lsyncd_pid"
    verify lsyncd
    if grep -qE 'Error|error' "$logs/lsyncd.log"; then
        failures+=("lsyncd: its log has errors (below)")
        {
            printf 'lsyncd log errors:\n'
            grep -E 'Error|error' "$logs/lsyncd.log" | head -n 10 | sed 's/^/    /'
        } >>"$res/problems"
    fi
fi

echo
"${co[@]}" table "$res"
echo "gosyncd counters after start-up, and after the checkouts:"
sed 's/^/  /' "$res/status-start" "$res/status-end"
echo "full comparison of the three trees (paths, types, modes, owners, sizes, SHA-256):"
sed 's/^/  /' "$res/verify"
if [ -s "$res/problems" ]; then
    echo
    cat "$res/problems"
fi
if [ "${#failures[@]}" -gt 0 ]; then
    echo
    printf 'FAIL: %s\n' "${failures[@]}"
    exit 1
fi
echo "correctness: every checkout made exactly one apply request per peer and reached both peers intact; the trees matched"
