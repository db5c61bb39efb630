#!/usr/bin/env python3
"""Helpers for sync-vs-rsync.sh and audit-vs-csync2.sh: tree generation, edits, verification, free ports and
the summary table. Standard library only.

    bench_helper.py gen DIR FILES TOTAL_BYTES SEED     create the tree, print the edit target
    bench_helper.py edit FILE VERSION                  rewrite FILE with new content, same size
    bench_helper.py verify SRC DST [DST ...]           exit 1 (and say why) if a DST differs
    bench_helper.py freeport START IP [IP ...]         first port free on every IP
    bench_helper.py listening IP PORT                  exit 0 when a socket listens there
    bench_helper.py table RESULTS_DIR                  print the summary table
    bench_helper.py table-csync2 RESULTS_DIR           the same for audit-vs-csync2.sh
"""

import hashlib
import os
import random
import socket
import statistics
import sys

# ---------------------------------------------------------------------------- tree


def generate(root, files, total, seed):
    """A deterministic tree: 20 top directories with 15 sub-directories each (320 in
    all), `files` files with heavy-tailed sizes summing to `total` bytes, random content
    (incompressible, like it matters for neither tool), mostly 0644 with some 0600/0640."""
    rng = random.Random(seed)
    dirs = []
    for i in range(20):
        top = f"app{i:02d}"
        dirs.append(top)
        dirs.extend(f"{top}/conf{j:02d}.d" for j in range(15))
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)

    weights = [rng.lognormvariate(0.0, 1.6) for _ in range(files)]
    scale = total / sum(weights)
    cap = 4 * 1024 * 1024
    sizes = [min(cap, max(1, int(w * scale))) for w in weights]
    # Spread the rounding remainder over the smaller files so the total is exact.
    short = total - sum(sizes)
    i = 0
    while short > 0 and i < 10 * files:  # bounded
        j = i % files
        if sizes[j] < cap:
            add = min(short, 1024, cap - sizes[j])
            sizes[j] += add
            short -= add
        i += 1

    target = None
    for n, size in enumerate(sizes):
        d = dirs[rng.randrange(len(dirs))]
        ext = rng.choice([".conf", ".cfg", ".map", ".pem", ".lua", ".json"])
        rel = f"{d}/f{n:05d}{ext}"
        path = os.path.join(root, rel)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
        roll = rng.random()
        os.chmod(path, 0o600 if roll < 0.05 else 0o640 if roll < 0.15 else 0o644)
        if target is None and 4096 <= size <= 65536:
            target = rel
    print(target)


def edit(path, version):
    """Rewrites a file in place with new content of the same size and a distinct mtime
    (so that rsync's size+mtime quick check sees the change too)."""
    size = os.path.getsize(path)
    rng = random.Random(f"edit-{version}")
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))
    st = os.stat(path)
    stamp = st.st_mtime_ns + (int(version) + 1) * 10**9
    os.utime(path, ns=(stamp, stamp))


# ---------------------------------------------------------------------------- verify


def manifest(root):
    """relative path -> (kind, mode, uid, gid, size, sha256 or link target), mtimes."""
    out, mtimes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            ids = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
            if os.path.islink(path):
                out[rel] = ("link", 0, 0, 0, 0, os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",) + ids + (0, "")
            else:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out[rel] = ("file",) + ids + (st.st_size, h.hexdigest())
                mtimes[rel] = st.st_mtime_ns
    return out, mtimes


def verify(src, dsts):
    want, want_mtimes = manifest(src)
    failed = False
    for dst in dsts:
        got, got_mtimes = manifest(dst)
        problems = []
        for rel in sorted(set(want) | set(got)):
            if rel not in got:
                problems.append(f"missing   {rel}")
            elif rel not in want:
                problems.append(f"extra     {rel}")
            elif want[rel] != got[rel]:
                problems.append(f"differs   {rel}: want {want[rel][:5]} got {got[rel][:5]}")
        if problems:
            failed = True
            print(f"VERIFY FAILED: {dst} differs from {src} in {len(problems)} paths:",
                  file=sys.stderr)
            for p in problems[:20]:
                print(f"  {p}", file=sys.stderr)
        # mtimes are informative only (gosyncd never compares them).
        off = sum(1 for r, m in want_mtimes.items() if got_mtimes.get(r, m) != m)
        if off:
            print(f"note: {dst}: {off} files with a different mtime than the source",
                  file=sys.stderr)
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------------------- ports


def freeport(start, ips):
    for port in range(start, start + 200):
        ok = True
        for ip in ips:
            s = socket.socket()
            try:
                s.bind((ip, port))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            print(port)
            return
    sys.exit(f"no free port in {start}..{start + 199} on {' '.join(ips)}")


def listening(ip, port):
    """Looks for a listening socket in /proc/net/tcp (connecting would start a TLS
    handshake the daemon logs as refused)."""
    a, b, c, d = (int(x) for x in ip.split("."))
    want = f"{d:02X}{c:02X}{b:02X}{a:02X}:{int(port):04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                sys.exit(0)
    sys.exit(1)


# ---------------------------------------------------------------------------- table


def numbers(results, key, suffix):
    path = os.path.join(results, key + suffix)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(line) for line in f if line.strip()]


def times(results, key):
    return numbers(results, key, ".times")


def cpu(results, key):
    return numbers(results, key, ".cpu")


def read_value(results, key, default="-"):
    path = os.path.join(results, key)
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return f.read().strip() or default


def fmt(values, how):
    if not values:
        return "-"
    return f"{(statistics.median if how == 'med' else min)(values):.3f}"


def theirs(key):
    """The rsync scenario a gosyncd scenario is compared with."""
    return key.removeprefix("beside-")


def table(results):
    print(read_value(results, "title"))
    print()
    head = (f"{'scenario':<34} {'gosyncd med':>11} {'min':>7}   {'rsync med':>9} {'min':>7}"
            f"   {'ratio':>6}   {'rsync seq med':>13}")
    print(head)
    print("-" * len(head))
    rows = [
        ("(a) initial sync, 3 empty peers", "initial"),
        ("(a) beside node 1's daemon", "beside-initial"),
        ("(b) no-change audit (dry run)", "nochange"),
        ("(c) one file changed", "onefile"),
    ]
    for label, key in rows:
        g, r, s = times(results, f"gosyncd-{key}"), times(results, f"rsync-{theirs(key)}"), \
            times(results, f"rsyncseq-{theirs(key)}")
        ratio = f"{statistics.median(g) / statistics.median(r):.2f}x" if g and r else "-"
        print(f"{label:<34} {fmt(g, 'med'):>11} {fmt(g, 'min'):>7}   {fmt(r, 'med'):>9}"
              f" {fmt(r, 'min'):>7}   {ratio:>6}   {fmt(s, 'med'):>13}")
    print()
    print("times in seconds, wall clock; rsync = the three rsyncs run concurrently;")
    print("ratio = gosyncd median / rsync median (above 1: gosyncd slower)")
    print()
    print("reference (same work, other settings), median / min in seconds:")
    refs = [
        ("rsync --fsync, initial (gosyncd makes its writes durable)", "rsyncfsync-initial"),
        ("rsync -c, no-change dry run (hashes all)", "rsyncsum-nochange"),
        ("gosyncd sync -dry against one peer", "gosyncd-onepeer"),
    ]
    for label, key in refs:
        v = times(results, key)
        print(f"  {label:<58} {fmt(v, 'med'):>7} / {fmt(v, 'min')}")
    print()
    print("CPU time of the machine during each run (every process of both ends and the")
    print("kernel's threads; median seconds; writes rsync leaves unflushed are written")
    print("back after its run, not charged to it):")
    for label, key in rows:
        g, r = cpu(results, f"gosyncd-{key}"), cpu(results, f"rsync-{theirs(key)}")
        ratio = f"{statistics.median(g) / statistics.median(r):.2f}x" if g and r else "-"
        print(f"  {label:<34} gosyncd {fmt(g, 'med'):>7}   rsync {fmt(r, 'med'):>7}   {ratio:>6}")
    after = [float(x) for x in read_value(results, "gosyncd-initial.after", "").split()]
    if after:
        print(f"  after (a), the peer daemons' comparison with each other (anti-entropy, not")
        print(f"  charged to the run above; CPU until the machine is quiet): {statistics.median(after):.2f}")
    print()
    print("peak memory (max resident set size):")
    for label, key in [
        ("gosyncd sync client, (a) initial", "rss-gosyncd-initial"),
        ("gosyncd sync client, (a) initial, node 1's daemon running", "rss-gosyncd-beside-initial"),
        ("gosyncd node 1's daemon, (a) with it running", "rss-node1-daemon"),
        ("gosyncd peer daemons, (a) with it, their start included", "rss-peers-beside"),
        ("gosyncd sync client, (b) no-change dry run", "rss-gosyncd-nochange"),
        ("gosyncd sync client, (c) one file changed", "rss-gosyncd-onefile"),
        ("gosyncd peer daemon 127.0.0.3 (VmHWM after the runs)", "rss-daemon-1"),
        ("gosyncd peer daemon 127.0.0.4 (VmHWM after the runs)", "rss-daemon-2"),
        ("gosyncd peer daemon 127.0.0.5 (VmHWM after the runs)", "rss-daemon-3"),
        ("one rsync client, (a) initial", "rss-rsync-initial"),
    ]:
        kbs = [int(x) for x in read_value(results, key + ".kb", "").split() if x.isdigit()]
        value = f"{max(kbs) / 1024:.1f} MiB" if kbs else "-"
        print(f"  {label:<58} {value:>11}")
    print()
    print("every run, in seconds:")
    keys = sorted(n[:-6] for n in os.listdir(results) if n.endswith(".times"))
    for key in keys:
        print(f"  {key:<22} " + " ".join(f"{t:.3f}" for t in times(results, key)))


def table_csync2(results):
    print(read_value(results, "title"))
    print()
    head = (f"{'scenario':<45} {'gosyncd med':>11} {'min':>7}   {'csync2 med':>10} {'min':>7}"
            f"   {'ratio':>6}")
    print(head)
    print("-" * len(head))
    # (label, gosyncd's key, csync2's key): (b2) and (c2) against csync2's (b) and (c).
    rows = [
        ("(b) no-change audit", "nochange", "nochange"),
        ("(b2) no-change audit, node 1's daemon running", "nochange-daemon", "nochange"),
        ("(c) no-change sync", "nochangesync", "nochangesync"),
        ("(c2) no-change sync, node 1's daemon running", "nochangesync-daemon", "nochangesync"),
        ("(d) one file changed, sync all", "onefile", "onefile"),
        ("(d2) (d), node 1's daemon running", "onefile-daemon", "onefile"),
        ("(e) one file changed, sync its path", "onepath", "onepath"),
    ]
    for label, gkey, ckey in rows:
        g, c = times(results, f"gosyncd-{gkey}"), times(results, f"csync2-{ckey}")
        ratio = f"{statistics.median(g) / statistics.median(c):.2f}x" if g and c else "-"
        print(f"{label:<45} {fmt(g, 'med'):>11} {fmt(g, 'min'):>7}   {fmt(c, 'med'):>10}"
              f" {fmt(c, 'min'):>7}   {ratio:>6}")
    print()
    print("times in seconds, wall clock; ratio = gosyncd median / csync2 median"
          " (above 1: gosyncd slower)")
    print("  (b) gosyncd sync -dry --exit-code    | csync2 -cr / (check), then csync2 -T (test)")
    print("  (c) gosyncd sync                     | csync2 -x")
    print("  (b2), (c2): gosyncd as in (b) and (c), with node 1's gosyncd daemon running (sync")
    print("      takes node 1's tree from it; in (b) and (c) none runs there); csync2: its runs")
    print("      of (b) and (c), not repeated")
    print("  (d) gosyncd sync                     | csync2 -x")
    print("  (d2) gosyncd as in (d), with node 1's daemon running (its watcher holding the edit:")
    print("      a 60 s debounce); csync2: its runs of (d)")
    print("  (e) gosyncd sync /etc/bench/FILE     | csync2 -c FILE (checkfile), then csync2 -u"
          " (update)")
    print()
    print("reference, median / min in seconds:")
    refs = [
        ("initial sync to 3 empty peers, gosyncd sync (one run)", "gosyncd-initial"),
        ("initial sync to 3 empty peers, csync2 -x (one run)", "csync2-initial"),
        ("csync2 -cr / alone (the local check, part of (b))", "csync2-check"),
        ("csync2 -T alone (databases compared, part of (b))", "csync2-test"),
        ("csync2 -c FILE alone (part of (e))", "csync2-checkfile"),
        ("csync2 -u alone (part of (e))", "csync2-update"),
    ]
    for label, key in refs:
        v = times(results, key)
        print(f"  {label:<58} {fmt(v, 'med'):>7} / {fmt(v, 'min')}")
    print()
    print("memory (maximum resident set size of each client run, over the runs; daemons:")
    print("VmRSS once idle, node 1's after (d2), the peers' after the runs, the largest of")
    print("the three):")
    for label, key in [
        ("gosyncd sync client, (b) audit", "rss-gosyncd-nochange"),
        ("gosyncd sync client, (b2) audit, node 1's daemon running",
         "rss-gosyncd-nochange-daemon"),
        ("csync2 client, (b) -cr / and -T", "rss-csync2-check rss-csync2-test"),
        ("gosyncd sync client, (d) one file", "rss-gosyncd-onefile"),
        ("gosyncd sync client, (d2) one file, node 1's daemon running",
         "rss-gosyncd-onefile-daemon"),
        ("csync2 client, (d) -x", "rss-csync2-onefile"),
        ("gosyncd sync client, initial sync", "rss-gosyncd-initial"),
        ("csync2 client, initial -x", "rss-csync2-initial"),
        ("gosyncd node 1 daemon, idle after (d2)", "rss-gosyncd-node1-idle"),
        ("gosyncd node 1 daemon, peak (VmHWM) after (d2)", "rss-gosyncd-node1-hwm"),
        ("gosyncd peer daemon, idle", "rss-gosyncd-idle"),
        ("gosyncd peer daemon, peak (VmHWM)", "rss-gosyncd-hwm"),
        ("csync2 daemon (-ii), idle", "rss-csync2-idle"),
    ]:
        kbs = [int(x) for k in key.split()
               for x in read_value(results, k + ".kb", "").split() if x.isdigit()]
        value = f"{max(kbs) / 1024:.1f} MiB" if kbs else "-"
        print(f"  {label:<58} {value:>11}")
    print()
    print("every run, in seconds:")
    keys = sorted(n[:-6] for n in os.listdir(results) if n.endswith(".times"))
    for key in keys:
        print(f"  {key:<27} " + " ".join(f"{t:.3f}" for t in times(results, key)))


def run(argv, doc, commands):
    """The command line (also latency_helper.py's): argv[1] names one of `commands`, a
    function of the remaining arguments; anything else exits with the usage, `doc`."""
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(doc)
    commands[argv[1]](argv[2:])


def main(argv):
    run(argv, __doc__, {
        "gen": lambda a: generate(a[0], int(a[1]), int(a[2]), int(a[3])),
        "edit": lambda a: edit(a[0], a[1]),
        "verify": lambda a: verify(a[0], a[1:]),
        "freeport": lambda a: freeport(int(a[0]), a[1:]),
        "listening": lambda a: listening(a[0], a[1]),
        "table": lambda a: table(a[0]),
        "table-csync2": lambda a: table_csync2(a[0]),
    })


if __name__ == "__main__":
    main(sys.argv)
