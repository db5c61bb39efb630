#!/usr/bin/env bash
# multi-host.sh: gosyncd deployed exactly as users deploy it, on three hosts.
#
# Each node is a network namespace with its own address (10.77.0.1-3, a private range that
# exists only inside the namespaces, joined by a bridge in a namespace of its own) and a
# mount namespace of its own, so that every node has its own real /etc/gosyncd-e2e at the
# SAME absolute path, with no `root` key. Every node runs the original tool's config form:
# bind_address = ":8080", the SAME remotes list naming all three nodes (itself included),
# and one shared self-signed certificate made with the openssl command line.
#
# It shows, and checks:
#   1. start-up never pushes: nodes started with different trees stay as they are;
#   2. `sync -dry` on node 1 lists the changes for nodes 2 and 3, skips node 1 itself,
#      and changes nothing; `sync` then makes the three trees identical;
#   3. automatic propagation: a file saved on node 2 reaches nodes 1 and 3;
#   4. a fourth namespace (10.77.0.4) with the valid certificate but an address no node
#      lists is refused (403) by every node, and nothing changes;
#   5. node 3's link is cut (`ip link set down`): an edit on node 1 still reaches node 2
#      at once, and node 3 catches up by itself after the link comes back.
#
# Needs root, ip (iproute2), unshare and nsenter (util-linux), openssl. Usage:
#     tests/e2e/multi-host.sh [PATH-TO-gosyncd]     (default: target/debug/gosyncd, built)
# Set KEEP=1 to keep the logs. Everything it creates is removed on exit: the namespaces,
# the processes, and /etc/gosyncd-e2e if it made it (an empty mount point).

set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
    (cd "$repo" && cargo build --quiet)
    bin=$repo/target/debug/gosyncd
fi
bin=$(realpath "$bin")

for tool in ip unshare nsenter openssl; do
    command -v "$tool" >/dev/null || { echo "multi-host.sh: $tool is missing" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "multi-host.sh: must run as root" >&2; exit 2; }

net=10.77.0
prefix=gsd-e2e-$$
base=/etc/gosyncd-e2e
dir=$base/haproxy
work=$(mktemp -d "${TMPDIR:-/tmp}/gosyncd-e2e.XXXXXX")
made_base=0
declare -A pid
failures=0

cleanup() {
    for n in "${!pid[@]}"; do kill "${pid[$n]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in hub 1 2 3 4; do ip netns del "$prefix-$ns" 2>/dev/null || true; done
    [ "$made_base" = 1 ] && rmdir "$base" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
check() { # check WHAT COMMAND...
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# Runs a command inside node N's network and mount namespaces.
on() { local n=$1; shift; nsenter -t "${pid[$n]}" -m -n -- "$@"; }
# A node's tree as "digest  path" lines, leaving out the excluded errors/.
tree() {
    on "$1" sh -c "cd $dir && find . -path ./errors -prune -o \( -type f -o -type l \) -print0 |
        sort -z | xargs -0 -r sha256sum"
}
same_tree() { [ "$(tree "$1")" = "$(tree "$2")" ]; }
holds() { [ "$(on "$1" cat "$dir/$2" 2>/dev/null)" = "$3" ]; }
absent() { ! on "$1" test -e "$dir/$2"; }
lacks() { ! grep -q "$1" <<<"$2"; }
# Polls COMMAND... every 0.1 s for up to SECONDS.
within() {
    local seconds=$1; shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

say "network: a bridge and four namespaces on $net.0/24"
ip netns add "$prefix-hub"
ip -n "$prefix-hub" link add br0 type bridge
ip -n "$prefix-hub" link set br0 up
for n in 1 2 3 4; do
    ip netns add "$prefix-$n"
    ip link add "e2e$$-$n" type veth peer name eth0 netns "$prefix-$n"
    ip link set "e2e$$-$n" netns "$prefix-hub"
    ip -n "$prefix-hub" link set "e2e$$-$n" master br0 up
    ip -n "$prefix-$n" link set lo up
    ip -n "$prefix-$n" addr add "$net.$n/24" dev eth0
    ip -n "$prefix-$n" link set eth0 up
done

say "one self-signed certificate for every node, made with openssl"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=gosyncd-e2e \
    -addext "subjectAltName=IP:$net.1,IP:$net.2,IP:$net.3,IP:$net.4" \
    -keyout "$work/gosyncd.key" -out "$work/gosyncd.crt" 2>/dev/null
if [ ! -d "$base" ]; then mkdir "$base"; made_base=1; fi

# Node N's files, copied into its own $base when it starts. Nodes 1-3 list the same
# three remotes; node 4 lists itself too, as an intruder copying the group's file would.
for n in 1 2 3 4; do
    stage=$work/node$n
    mkdir -p "$stage/haproxy/errors"
    cp "$work/gosyncd.crt" "$work/gosyncd.key" "$stage/"
    remotes="  \"$net.1:8080\",
  \"$net.2:8080\",
  \"$net.3:8080\""
    [ "$n" = 4 ] && remotes="$remotes,
  \"$net.4:8080\""
    cat >"$stage/config.hcl" <<EOF
bind_address = ":8080"

remotes = [
$remotes
]

tls_ca_certificate = "$base/gosyncd.crt"
tls_certificate = "$base/gosyncd.crt"
tls_private_key = "$base/gosyncd.key"

# Each node its own spool of undelivered changes, on its own tmpfs.
state_directory = "$base/state"

directory "$dir" {
  exclude = [
    "$dir/errors"
  ]
}
EOF
done
printf 'global\n  maxconn 4096\n' >"$work/node1/haproxy/haproxy.cfg"
printf 'backend web\n  server a 10.0.0.1:80\n' >"$work/node1/haproxy/backends.cfg"
printf 'node 1 only\n' >"$work/node1/haproxy/errors/503.http"
printf 'stale\n' >"$work/node2/haproxy/haproxy.cfg"
printf 'intruder\n' >"$work/node4/haproxy/planted.cfg"

# Starts node N's daemon in its namespaces, with its own tmpfs at $base.
start() {
    local n=$1
    RUST_LOG=info NO_COLOR=1 ip netns exec "$prefix-$n" \
        unshare --mount --propagation private -- sh -c \
        "mount -t tmpfs tmpfs $base && cp -a $work/node$n/. $base/ && exec $bin -config $base/config.hcl" \
        >"$work/node$n.log" 2>&1 &
    pid[$n]=$!
}
# Runs the CLI as node N (a one-shot process in the node's namespaces).
cli() { local n=$1; shift; NO_COLOR=1 on "$n" "$bin" -config "$base/config.hcl" "$@"; }
listening() { grep -q "listening and watching" "$work/node$1.log"; }

say "three daemons, seed-style config, different trees"
# Nodes 2 and 3 first: node 1 compares with them when it starts, and must find them up.
for n in 2 3 1; do
    start "$n"
    within 20 listening "$n" || { cat "$work/node$n.log"; fail "node $n started"; exit 1; }
done
pass "three daemons listening on :8080 in their own namespaces"
within 10 grep -q "drift" "$work/node1.log" || true
check "start-up pushed nothing (node 2 keeps its stale file, node 3 stays empty)" \
    eval 'holds 2 haproxy.cfg stale && absent 3 haproxy.cfg'
check "node 1 logged the drift instead" grep -q "drift" "$work/node1.log"

say "gosyncd sync -dry on node 1"
dry=$(cli 1 sync -dry 2>&1) || true
printf '%s\n' "$dry" | sed 's/^/    /'
check "it lists the changes for node 2" grep -q "\[M\] $net.2:8080 $dir/haproxy.cfg" <<<"$dry"
check "it lists the changes for node 3" grep -q "\[+\] $net.3:8080 $dir/backends.cfg" <<<"$dry"
check "it skips node 1 itself" lacks "$net.1:8080" "$dry"
check "it leaves the excluded errors/ alone" lacks "errors" "$dry"
check "it changed nothing" eval 'holds 2 haproxy.cfg stale && absent 3 haproxy.cfg'

say "gosyncd sync on node 1"
out=$(cli 1 sync 2>&1)
printf '%s\n' "$out" | sed 's/^/    /'
check "the trees of nodes 1, 2 and 3 are identical (the excluded errors/ aside)" \
    eval 'same_tree 1 2 && same_tree 1 3 && holds 2 haproxy.cfg "$(on 1 cat $dir/haproxy.cfg)"'
check "node 1's excluded file stayed on node 1" eval 'absent 2 errors/503.http && absent 3 errors/503.http'

say "automatic propagation: a file saved on node 2"
on 2 sh -c "printf 'frontend www\n  bind :80\n' > $dir/frontend.cfg"
check "it reaches nodes 1 and 3 with no command" \
    within 10 eval 'holds 1 frontend.cfg "$(printf "frontend www\n  bind :80")" && holds 3 frontend.cfg "$(printf "frontend www\n  bind :80")"'

say "a fourth namespace with the valid certificate, at an address no node lists"
before=$(tree 1)
intruder=$(RUST_LOG=warn NO_COLOR=1 ip netns exec "$prefix-4" \
    unshare --mount --propagation private -- sh -c \
    "mount -t tmpfs tmpfs $base && cp -a $work/node4/. $base/ && exec $bin -config $base/config.hcl sync" 2>&1) && code=0 || code=$?
printf '%s\n' "$intruder" | sed 's/^/    /'
check "its sync fails (exit code 2)" test "$code" = 2
for n in 1 2 3; do
    check "node $n refused it with 403, naming its address" \
        grep -q "403.*client address $net.4 .*peer=$net.$n:8080" <<<"$intruder"
    check "node $n logged the refusal with the certificate's subject" \
        grep -q "client address not allowed.*CN=gosyncd-e2e" "$work/node$n.log"
done
check "nothing changed on the nodes" eval '[ "$(tree 1)" = "$before" ] && same_tree 1 2 && same_tree 1 3 && absent 1 planted.cfg'

say "node 3's link is cut"
ip -n "$prefix-3" link set eth0 down
on 1 sh -c "printf 'global\n  maxconn 8192\n' > $dir/haproxy.cfg"
check "node 2 gets the edit at once" within 10 holds 2 haproxy.cfg "$(printf 'global\n  maxconn 8192')"
# A cut link fails the push within the connect timeout (5 s) on a new connection, the
# link-loss timeout (30 s) on a kept-alive one, or at once when the kernel answers "no
# route to host"; which one depends on the kernel's neighbour cache. The change is kept
# for node 3 and retried with backoff.
check "node 1 notices that node 3 is unreachable (within 45 s)" \
    within 45 grep -q "peer unreachable.*peer=$net.3:8080" "$work/node1.log"
check "node 3 does not have the edit while its link is down" \
    holds 3 haproxy.cfg "$(printf 'global\n  maxconn 4096')"
ip -n "$prefix-3" link set eth0 up
check "node 3 catches up after the link comes back, with no command" \
    within 90 holds 3 haproxy.cfg "$(printf 'global\n  maxconn 8192')"
check "node 1 logged the recovery" within 10 grep -q "reachable again.*peer=$net.3:8080" "$work/node1.log"
check "the three trees are identical" eval 'same_tree 1 2 && same_tree 1 3'

say "logged warnings and errors (node 1)"
grep -E " (WARN|ERROR) " "$work/node1.log" | sed 's/^/    /' || true

if [ "$failures" -gt 0 ]; then
    say "$failures check(s) failed"
    for n in 1 2 3; do echo "--- node $n log"; tail -n 30 "$work/node$n.log"; done
    exit 1
fi
say "multi-host test passed"
