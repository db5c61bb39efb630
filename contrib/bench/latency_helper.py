#!/usr/bin/env python3
"""Helpers for latency-vs-lsyncd.sh: the watched tree, timed saves, idle detection,
daemon counters and the summary table. Standard library only (inotify through ctypes).

    latency_helper.py tree DIR FILES DIRS SEED          create FILES small files in DIRS dirs
    latency_helper.py saves OUT TAG N GAP_MS TIMEOUT_S MODE SRC PEER [PEER ...]
                                                         time N saves of SRC until every PEER
                                                         holds the new content
    latency_helper.py idle SECONDS MAX_SECONDS PID...   wait until the PIDs are (nearly) idle
    latency_helper.py cpu SECONDS PID...                each PID's CPU use (% of one CPU)
    latency_helper.py rss KEY PID                        print "KEY VmRSS_kB VmHWM_kB"
    latency_helper.py status CRT KEY IP:PORT...          print each daemon's /v1/status counters
    latency_helper.py table RESULTS_DIR                  print the summary table
"""

import ctypes
import http.client
import json
import math
import os
import random
import select
import ssl
import statistics
import sys
import time
import uuid

sys.dont_write_bytecode = True  # no __pycache__ in contrib/bench
from bench_helper import read_value, run  # noqa: E402  (this directory is on sys.path)

# ---------------------------------------------------------------------------- tree


def tree(root, files, ndirs, seed):
    """A deterministic tree of small configuration-like files: 20 top directories with
    sub-directories under them (`ndirs` directories in all), `files` files of 64 bytes to
    4 kB of text spread over them."""
    rng = random.Random(seed)
    tops = 20
    per_top = max(0, ndirs // tops - 1)
    dirs = []
    for i in range(tops):
        top = f"svc{i:02d}"
        dirs.append(top)
        dirs.extend(f"{top}/conf{j:02d}.d" for j in range(per_top))
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    words = ["listen", "server", "backend", "timeout", "option", "bind", "maxconn",
             "include", "acl", "use_backend", "default", "log", "mode", "retries"]
    for n in range(files):
        d = dirs[n % len(dirs)]
        size = int(min(4096, max(64, rng.lognormvariate(6.0, 0.8))))
        lines, length = [], 0
        while length < size:  # bounded: every line adds at least 10 bytes
            line = f"{rng.choice(words)} {rng.randrange(1 << 30):x} {rng.choice(words)}\n"
            lines.append(line)
            length += len(line)
        with open(os.path.join(root, d, f"f{n:05d}.conf"), "w") as f:
            f.write("".join(lines)[:size])
    print(len(dirs))


# ---------------------------------------------------------------------------- inotify

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100


class DirWatch:
    """inotify on a set of directories; wait() returns when any of them changes, or
    after `fallback` seconds (a safety net: the files are re-read then too)."""

    def __init__(self, dirs):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        for d in sorted(set(dirs)):
            if self.libc.inotify_add_watch(self.fd, os.fsencode(d), mask) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)

    def wait(self, fallback):
        if self.poll.poll(fallback * 1000):
            self.drain()

    def drain(self):
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass


def read_or_none(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def signature(path):
    """What a stat says of a file (no open: opening a file is itself an inotify event for
    a watcher that listens to IN_OPEN)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# ---------------------------------------------------------------------------- saves


def save(path, content, mode):
    """Saves `content` to `path`: "rename" writes a new temporary file in the same
    directory and renames it over the target (what most editors and config tools do);
    "overwrite" truncates and rewrites the file in place. No fsync either way."""
    if mode == "rename":
        d, name = os.path.split(path)
        tmp = os.path.join(d, f".{name}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    else:
        with open(path, "wb") as f:
            f.write(content)


def saves(out, tag, n, gap_ms, timeout_s, mode, src, peers):
    """N timed saves of `src`. For each: the content is new and unique; the clock starts
    just before the save and stops when every peer file holds exactly that content. The
    peers' files are stat'ed on every inotify event in their directories (and every 10 ms
    anyway) and read when their stat changes. Then, after a gap drawn uniformly from
    GAP_MS +- 100 ms (so that the saves do not fall into step with anything periodic),
    the peers and the source are checked again (stat, and a read if it changed): they
    must still hold that content (no late overwrite, no echo). Writes one line per save
    to OUT."""
    watch = DirWatch([os.path.dirname(p) for p in peers])
    rng = random.Random(f"{tag}-{os.getpid()}-{time.time_ns()}")
    filler = "".join(f"server s{k:03d} 127.0.0.{k % 250 + 2}:80 check\n" for k in range(24))
    seen = [signature(p) for p in peers]
    timeouts = unstable = 0
    with open(out, "w") as log:
        for i in range(1, n + 1):
            content = (f"# {tag} save {i} {uuid.UUID(int=rng.getrandbits(128))}\n"
                       + filler).encode()
            watch.drain()
            t0 = time.perf_counter()
            save(src, content, mode)
            src_sig = signature(src)
            arrived = [None] * len(peers)
            deadline = t0 + timeout_s
            while True:  # bounded by the deadline
                now = time.perf_counter()
                for k, p in enumerate(peers):
                    if arrived[k] is None:
                        sig = signature(p)
                        if sig != seen[k]:
                            seen[k] = sig
                            if read_or_none(p) == content:
                                arrived[k] = now
                if all(a is not None for a in arrived) or now > deadline:
                    break
                watch.wait(0.010)
            if all(a is not None for a in arrived):
                ms = (max(arrived) - t0) * 1000
                first = (min(arrived) - t0) * 1000
                status = "ok"
            else:
                ms = first = float("nan")
                status = "timeout"
                timeouts += 1
                got = [read_or_none(p) for p in peers]
                print(f"[bench]   {tag}: save {i} not on every peer after {timeout_s}s: "
                      + ", ".join(f"{p}: {'missing' if g is None else g[:60]!r}"
                                  for p, g in zip(peers, got)), file=sys.stderr)
            time.sleep(max(0, gap_ms + rng.uniform(-100, 100)) / 1000)
            if status == "ok":
                changed = []
                for p, before in zip(peers + [src], seen + [src_sig]):
                    sig = signature(p)
                    if sig != before and read_or_none(p) != content:
                        changed.append(p)
                    if p in peers:
                        seen[peers.index(p)] = sig
                if changed:
                    status = "changed-after"
                    unstable += 1
                    print(f"[bench]   {tag}: save {i}: content changed after replication: "
                          + ", ".join(f"{p}: {read_or_none(p)!r:.70}" for p in changed),
                          file=sys.stderr)
            log.write(f"{i} {status} {ms:.3f} {first:.3f}\n")
            log.flush()
            if i % 10 == 0 or i == n:
                print(f"[bench]   {tag}: {i}/{n} saves, last {ms:.1f} ms", file=sys.stderr)
    sys.exit(1 if timeouts or unstable else 0)


# ---------------------------------------------------------------------------- processes


def cpu_ticks(pid):
    """utime + stime of a process, all its threads (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def idle(quiet, limit, pids):
    """Waits (at most `limit` seconds) until `pids` together used less than 2% of one
    CPU over the last `quiet` seconds; prints the seconds waited."""
    hz = os.sysconf("SC_CLK_TCK")
    start = time.monotonic()
    samples = [(start, sum(cpu_ticks(p) for p in pids))]
    while time.monotonic() - start < limit:
        time.sleep(0.25)
        now = time.monotonic()
        samples.append((now, sum(cpu_ticks(p) for p in pids)))
        old = [s for s in samples if now - s[0] >= quiet]
        if old:
            t, ticks = old[-1]
            if (samples[-1][1] - ticks) / hz / (now - t) < 0.02:
                print(f"{now - start:.1f}")
                return
    print(f"{time.monotonic() - start:.1f} (still busy)")


def cpu(seconds, pids):
    """Each pid's CPU use over `seconds`, in % of one CPU, on one line."""
    hz = os.sysconf("SC_CLK_TCK")
    t0, before = time.monotonic(), [cpu_ticks(p) for p in pids]
    time.sleep(seconds)
    t1, after = time.monotonic(), [cpu_ticks(p) for p in pids]
    print(" ".join(f"{(a - b) / hz / (t1 - t0) * 100:.1f}" for a, b in zip(after, before)))


def rss(key, pid):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = rest.split()[0]
    print(key, values.get("VmRSS", "-"), values.get("VmHWM", "-"))


def status(crt, key, addrs):
    """Each daemon's counters, through the same mutual TLS its peers use, from the first
    daemon's address (the group's routes answer the group's addresses only)."""
    ctx = ssl.create_default_context(cafile=crt)
    ctx.load_cert_chain(crt, key)
    source = addrs[0].rsplit(":", 1)[0]
    for addr in addrs:
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10,
                                           source_address=(source, 0))
        try:
            conn.request("GET", "/v1/status")
            body = json.loads(conn.getresponse().read())
            c = body["counters"]
            print(addr, " ".join(f"{k}={c[k]}" for k in
                                 ("pushes", "apply_requests", "applied", "conflicts_refused",
                                  "conflicts_reported")))
        except (OSError, ValueError, KeyError) as e:
            print(addr, f"error={e!r}".replace(" ", "_"))
        finally:
            conn.close()


# ---------------------------------------------------------------------------- table


def load_saves(results, key):
    path = os.path.join(results, key + ".saves")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                i, st, ms, first = line.split()
                rows.append((int(i), st, float(ms), float(first)))
    return rows


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


SCENARIOS = [
    ("gosyncd-default", "gosyncd, default settings"),
    ("gosyncd-1s", "gosyncd, debounce 1s"),
    ("lsyncd-0", "lsyncd default.rsync, delay 0"),
    ("lsyncd-1", "lsyncd default.rsync, delay 1"),
    ("lsyncd-default", "lsyncd default.rsync, delay 15 (default)"),
]


def table(results):
    print(read_value(results, "title"))
    print()
    head = (f"{'scenario':<42} {'saves':>5} {'ok':>4} {'p50 ms':>8} {'p95 ms':>8}"
            f" {'max ms':>8} {'min ms':>8} {'1st peer p50':>12}")
    print(head)
    print("-" * len(head))
    p50 = {}
    for key, label in SCENARIOS:
        rows = load_saves(results, key)
        if not rows:
            print(f"{label:<42} {'(not run)':>5}")
            continue
        ok = [r for r in rows if r[1] == "ok"]
        lat = [r[2] for r in rows if r[1] != "timeout"]
        first = [r[3] for r in rows if r[1] != "timeout"]
        if lat:
            p50[key] = statistics.median(lat)
            print(f"{label:<42} {len(rows):>5} {len(ok):>4} {p50[key]:>8.1f}"
                  f" {pct(lat, 95):>8.1f} {max(lat):>8.1f} {min(lat):>8.1f}"
                  f" {statistics.median(first):>12.1f}")
        else:
            print(f"{label:<42} {len(rows):>5} {len(ok):>4}   (no save replicated)")
    print()
    print("latency = from just before the save on node 1 until BOTH peers hold the new")
    print("content; ok = replicated and still intact after the gap; p95 = nearest rank")
    print()

    def ratio(a, b, label):
        if a in p50 and b in p50 and p50[b] > 0:
            print(f"  {label:<58} {p50[a] / p50[b]:>7.2f}x")

    print("ratios of p50:")
    ratio("gosyncd-default", "lsyncd-0", "gosyncd default / lsyncd delay 0 (no waiting at all)")
    ratio("lsyncd-default", "gosyncd-default", "lsyncd delay 15 (default) / gosyncd default")
    ratio("lsyncd-1", "gosyncd-default", "lsyncd delay 1 / gosyncd default")
    ratio("lsyncd-1", "gosyncd-1s", "lsyncd delay 1 / gosyncd debounce 1s (equal wait)")
    print()
    print(f"memory, idle, each node watching {read_value(results, 'treedesc')}:")
    for key, label in [
        ("rss-node1", "gosyncd node 1 (127.0.0.2, the one edited)"),
        ("rss-node2", "gosyncd node 2 (127.0.0.3)"),
        ("rss-node3", "gosyncd node 3 (127.0.0.4)"),
        ("rss-lsyncd", "lsyncd (two syncs, delay 1), for comparison"),
    ]:
        idle_v = read_value(results, key + ".idle", "- - -").split()
        after_v = read_value(results, key + ".after", "- - -").split()

        def mib(v):
            return f"{int(v) / 1024:.1f} MiB" if v.isdigit() else "-"

        print(f"  {label:<46} VmRSS idle {mib(idle_v[1]):>9}   after the saves"
              f" {mib(after_v[1]):>9} (VmHWM {mib(after_v[2])})")
    print()
    print("CPU use with no saves, over 5 s once start-up was over (% of one CPU):")
    for key, label in [
        ("cpu-gosyncd-default", "gosyncd nodes 1 / 2 / 3, default settings"),
        ("cpu-gosyncd-1s", "gosyncd nodes 1 / 2 / 3, debounce 1s"),
        ("cpu-lsyncd-0", "lsyncd, delay 0"),
        ("cpu-lsyncd-1", "lsyncd, delay 1"),
        ("cpu-lsyncd-default", "lsyncd, delay 15"),
    ]:
        v = read_value(results, key, "")
        if v:
            print(f"  {label:<46} {' / '.join(v.split())}")
    print()
    for key, label in [("status-gosyncd-default", "gosyncd counters after the default run"),
                       ("status-gosyncd-1s", "gosyncd counters after the 1s run")]:
        v = read_value(results, key, "")
        if v:
            print(label + ":")
            for line in v.splitlines():
                print("  " + line)
    print()
    print("load average (1/5/15 min) at the start/end of each scenario:")
    for key, label in SCENARIOS:
        v = read_value(results, key + ".load", "")
        if v:
            print(f"  {label:<42} {v}")
    print()
    print("every save, ms (x = not replicated in time, ! = changed after replication):")
    for key, label in SCENARIOS:
        rows = load_saves(results, key)
        if rows:
            marks = {"ok": "", "changed-after": "!"}
            cells = [("x" if st == "timeout" else f"{ms:.0f}{marks.get(st, '?')}")
                     for _, st, ms, _ in rows]
            print(f"  {key}:")
            for k in range(0, len(cells), 20):
                print("    " + " ".join(cells[k:k + 20]))


def main(argv):
    run(argv, __doc__, {
        "tree": lambda a: tree(a[0], int(a[1]), int(a[2]), int(a[3])),
        "saves": lambda a: saves(a[0], a[1], int(a[2]), float(a[3]), float(a[4]), a[5],
                                 a[6], a[7:]),
        "idle": lambda a: idle(float(a[0]), float(a[1]), [int(p) for p in a[2:]]),
        "cpu": lambda a: cpu(float(a[0]), [int(p) for p in a[1:]]),
        "rss": lambda a: rss(a[0], int(a[1])),
        "status": lambda a: status(a[0], a[1], a[2:]),
        "table": lambda a: table(a[0]),
    })


if __name__ == "__main__":
    main(sys.argv)
