#!/usr/bin/env python3
"""Helpers for checkout-burst.sh: the second branch's edits, tree manifests, the timed
checkouts and the summary table. Standard library only.

    checkout_helper.py mutate DIR CHANGED CREATED DELETED NEW_DIR SEED
                            rewrite CHANGED files, delete DELETED, create CREATED
                            (NEW_DIR of them in a new directory)
    checkout_helper.py manifest DIR OUT                  write DIR's manifest (JSON) to OUT
    checkout_helper.py checkouts OUT TAG N TIMEOUT_S QUIET_S GIT_DIR SRC A.json B.json
                            PEER PEER (status CRT KEY IP:PORT... | lsyncd LOG)
                            N alternating checkouts in SRC, each timed until every PEER
                            holds the checked-out state of the paths that differ
    checkout_helper.py status CRT KEY IP:PORT...         print each daemon's /v1/status counters
    checkout_helper.py table RESULTS_DIR                 print the summary table
"""

import hashlib
import http.client
import json
import math
import os
import random
import ssl
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in contrib/bench
from bench_helper import read_value, run  # noqa: E402  (this directory is on sys.path)

# ---------------------------------------------------------------------------- branch B


def mutate(root, changed, created, deleted, new_dir, seed):
    """The edits that make branch B from branch A, deterministic: CHANGED files get new
    content (one line in three rewritten, a line appended), DELETED others are removed,
    and CREATED new files appear, NEW_DIR of them in a new directory, svc-b (so that a
    checkout of B creates a directory and one of A deletes it)."""
    rng = random.Random(f"mutate-{seed}")
    files = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, names in os.walk(root) for f in names)
    if changed + deleted > len(files):
        sys.exit(f"CHANGED + DELETED ({changed + deleted}) exceeds the {len(files)} files")
    picked = rng.sample(files, changed + deleted)
    for rel in picked[:changed]:
        path = os.path.join(root, rel)
        with open(path) as f:
            lines = f.read().splitlines(keepends=True)
        for k in range(0, len(lines), 3):
            lines[k] = f"option {rng.randrange(1 << 30):x} # branch B\n"
        lines.append(f"# edited on branch B {rng.randrange(1 << 62):x}\n")
        with open(path, "w") as f:
            f.write("".join(lines))
    for rel in picked[changed:]:
        os.remove(os.path.join(root, rel))
    dirs = sorted({os.path.dirname(rel) for rel in files})
    in_new = min(new_dir, created)
    if in_new:
        os.mkdir(os.path.join(root, "svc-b"))
    for n in range(created):
        d = "svc-b" if n < in_new else rng.choice(dirs)
        with open(os.path.join(root, d, f"new{n:03d}.conf"), "w") as f:
            f.write("".join(f"server b{n:03d}-{k} 127.0.0.{k + 2}:8080 check\n"
                            for k in range(rng.randrange(2, 40))))


# ---------------------------------------------------------------------------- manifests


def describe(path, with_mode=True):
    """What is at `path`: None (absent), ("dir", mode), ("file", mode, sha256) or
    ("link", 0, target). `with_mode=False` leaves the mode out (0)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = st.st_mode & 0o7777 if with_mode else 0
    if os.path.islink(path):
        return ("link", 0, os.readlink(path))
    if os.path.isdir(path):
        return ("dir", mode, "")
    try:
        with open(path, "rb") as f:
            return ("file", mode, hashlib.sha256(f.read()).hexdigest())
    except FileNotFoundError:
        return None


def manifest(root, out):
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            entries[os.path.relpath(path, root)] = describe(path)
    with open(out, "w") as f:
        json.dump(entries, f, sort_keys=True)


def load_manifest(path):
    with open(path) as f:
        return {rel: tuple(v) for rel, v in json.load(f).items()}


def signature(path):
    """What an lstat says of a path (no open)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# ---------------------------------------------------------------------------- counters


class Gosyncd:
    """Each daemon's /v1/status counters, through the same mutual TLS its peers use, from
    node 1's address (the group's routes answer the group's addresses)."""

    KEYS = ("pushes", "apply_requests", "applied", "conflicts_refused", "conflicts_reported")

    def __init__(self, crt, key, addrs):
        self.ctx = ssl.create_default_context(cafile=crt)
        self.ctx.load_cert_chain(crt, key)
        self.addrs = addrs
        self.source = addrs[0].rsplit(":", 1)[0]

    def read(self):
        out = []
        for addr in self.addrs:
            host, port = addr.rsplit(":", 1)
            conn = http.client.HTTPSConnection(host, int(port), context=self.ctx, timeout=10,
                                               source_address=(self.source, 0))
            try:
                conn.request("GET", "/v1/status")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise OSError(f"{addr}: /v1/status answered {resp.status}: {body[:200]!r}")
                c = json.loads(body)["counters"]
                out.append(tuple(c[k] for k in self.KEYS))
            finally:
                conn.close()
        return tuple(out)

    def show(self):
        for addr, values in zip(self.addrs, self.read()):
            print(addr, " ".join(f"{k}={v}" for k, v in zip(self.KEYS, values)))

    @staticmethod
    def delta(before, after):
        """The counters one checkout added: the group's apply requests, node 1's pushes,
        the peers' pushes, the ops each peer applied, conflicts."""
        d = [[a - b for a, b in zip(x, y)] for x, y in zip(after, before)]
        return {
            "requests": sum(n[1] for n in d),
            "node1_requests": d[0][1],
            "node1_pushes": d[0][0],
            "peer_pushes": sum(n[0] for n in d[1:]),
            "applied": [n[2] for n in d[1:]],
            "conflicts": sum(n[3] + n[4] for n in d),
        }


class Lsyncd:
    """lsyncd has no counters: its log's `Calling rsync` lines count its rsync runs."""

    def __init__(self, logfile):
        self.logfile = logfile

    def read(self):
        try:
            with open(self.logfile, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        return (text.count("Calling rsync"), len(text))

    @staticmethod
    def delta(before, after):
        return {"requests": after[0] - before[0]}


def wait_quiet(source, quiet_s, limit_s):
    """Waits until `source.read()` has not changed for `quiet_s` (at most `limit_s`);
    returns the last value and whether it became quiet."""
    start = time.monotonic()
    last, since = source.read(), start
    while time.monotonic() - start < limit_s:
        time.sleep(0.1)
        now_value, now = source.read(), time.monotonic()
        if now_value != last:
            last, since = now_value, now
        elif now - since >= quiet_s:
            return last, True
    return last, False


# ---------------------------------------------------------------------------- checkouts


def same(found, want):
    """Whether a peer's path matches the wanted state; the mode is compared by the full
    verification, not here (lsyncd's rsync does not carry modes)."""
    if found is None or want is None:
        return found is None and want is None
    return found[0] == want[0] and found[2] == want[2]


def checkouts(out, tag, n, timeout_s, quiet_s, git_dir, src, a_json, b_json, peers, counters):
    """N checkouts in SRC, alternating between the branches A and B, starting with the
    one not checked out. For each: the clock starts just before `git checkout` and stops
    when every peer holds, for every path that differs between A and B, what the branch
    has (content and type; absent for a path the branch does not have). The peers are
    polled every 10 ms with lstat, and a path is read only when its lstat changed (so a
    file that did not change is never opened); the first lstat that changed on a peer
    also gives the time the push began to land. Then the group must be quiet (the counters
    unchanged for QUIET_S); the counters' difference is recorded, and node 1 and the
    peers are checked again in full for those paths, modes included for gosyncd."""
    states = {"A": load_manifest(a_json), "B": load_manifest(b_json)}
    paths = sorted(set(states["A"]) | set(states["B"]),
                   key=lambda p: (p.count("/"), p))
    paths = [p for p in paths if states["A"].get(p) != states["B"].get(p)]
    head = subprocess.run(["git", f"--git-dir={git_dir}", "symbolic-ref", "--short", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()
    branch = head
    with_mode = isinstance(counters, Gosyncd)
    failures = []
    with open(out, "w") as log:
        for i in range(1, n + 1):
            old, branch = branch, ("B" if branch == "A" else "A")
            want = states[branch]
            before = counters.read()
            pending = [set(paths) for _ in peers]
            seen = [{p: signature(os.path.join(peer, p)) for p in paths} for peer in peers]
            done = [None] * len(peers)
            landed = None  # when a peer's first changed path was seen
            unexpected = []
            wall = time.time()
            t0 = time.perf_counter()
            git = subprocess.run(["git", f"--git-dir={git_dir}", f"--work-tree={src}",
                                  "checkout", "-q", branch], capture_output=True, text=True)
            t_git = time.perf_counter()
            if git.returncode != 0:
                sys.exit(f"[bench]   {tag}: git checkout {branch} failed: {git.stderr.strip()}")
            deadline = t0 + timeout_s
            while any(pending) and time.perf_counter() < deadline:  # bounded by the deadline
                for k, peer in enumerate(peers):
                    for p in sorted(pending[k]):
                        path = os.path.join(peer, p)
                        sig = signature(path)
                        if sig == seen[k][p]:
                            continue
                        seen[k][p] = sig
                        if landed is None:
                            landed = time.perf_counter()
                        found = describe(path, with_mode=False)
                        if same(found, want.get(p)):
                            pending[k].discard(p)
                        elif not same(found, states[old].get(p)):
                            unexpected.append(f"{peer}/{p}: {found}")
                    if not pending[k] and done[k] is None:
                        done[k] = time.perf_counter()
                if any(pending):
                    time.sleep(0.010)
            git_ms = (t_git - t0) * 1000
            if any(pending):
                ms = first = float("nan")
                status = "timeout"
                sample = sorted(f"{peer}/{p}" for peer, left in zip(peers, pending) for p in left)
                print(f"[bench]   {tag}: checkout {i} ({branch}): {len(sample)} peer paths "
                      f"still differ after {timeout_s:.0f}s, e.g. " + ", ".join(sample[:5]),
                      file=sys.stderr)
            else:
                ms, first = (max(done) - t0) * 1000, (min(done) - t0) * 1000
                status = "ok"
            after, quiet = wait_quiet(counters, quiet_s, 60)
            delta = counters.delta(before, after)
            # The final state, read in full: node 1 (what git wrote) and both peers.
            differ = []
            for p in paths:
                if describe(os.path.join(src, p)) != want.get(p):
                    differ.append(f"node 1 {p}")
                for peer in peers:
                    found = describe(os.path.join(peer, p), with_mode=with_mode)
                    if with_mode and found != want.get(p) or not same(found, want.get(p)):
                        differ.append(f"{peer}/{p}: {found} (want {want.get(p)})")
            if status == "ok" and (differ or unexpected):
                status = "differs"
            if not quiet:
                status += ",not-quiet"
            if differ or unexpected:
                print(f"[bench]   {tag}: checkout {i} ({branch}): {len(differ)} paths differ "
                      f"after it, {len(unexpected)} unexpected states during it: "
                      + "; ".join((differ + unexpected)[:5]), file=sys.stderr)
            start = f"{time.strftime('%H:%M:%S', time.gmtime(wall))}.{int(wall * 1000) % 1000:03d}"
            land_ms = (landed - t0) * 1000 if landed is not None else float("nan")
            record = {"i": i, "to": branch, "start": start, "status": status,
                      "git_ms": round(git_ms, 3), "land_ms": round(land_ms, 3),
                      "ms": round(ms, 3), "first_ms": round(first, 3), "paths": len(paths),
                      "differ": len(differ), "unexpected": len(unexpected)}
            record.update(delta)
            log.write(json.dumps(record) + "\n")
            log.flush()
            what = f"checkout {i} (to {branch})"
            if status.startswith("timeout"):
                failures.append(f"{what}: not replicated within {timeout_s:.0f} s")
            if differ:
                failures.append(f"{what}: {len(differ)} changed paths differ from the branch "
                                "once the group was quiet")
            if unexpected:
                failures.append(f"{what}: a peer showed {len(unexpected)} paths in a state "
                                "neither branch has")
            if not quiet:
                failures.append(f"{what}: still busy 60 s after it")
            if with_mode and delta["requests"] != 2:
                failures.append(
                    f"{what}: {delta['requests']} apply requests in the group, expected 2 "
                    f"(node 1 pushed {delta['node1_pushes']}, the peers "
                    f"{delta['peer_pushes']}; applied {'/'.join(map(str, delta['applied']))}; "
                    f"replicated in {ms:.0f} ms, git took {git_ms:.0f} ms)")
            print(f"[bench]   {tag}: checkout {i}/{n} to {branch}: git {git_ms:.0f} ms, "
                  f"replicated {ms:.0f} ms, {delta['requests']} requests", file=sys.stderr)
    with open(out + ".fail", "w") as f:
        f.writelines(line + "\n" for line in failures)
    sys.exit(1 if failures else 0)


# ---------------------------------------------------------------------------- table


def load(results, key):
    path = os.path.join(results, key + ".checkouts")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def span(values):
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


SCENARIOS = [
    ("gosyncd", "gosyncd, default settings", "apply requests"),
    ("lsyncd", "lsyncd default.rsync, delay 1", "rsync runs"),
]


def table(results):
    print(read_value(results, "title"))
    print()
    head = (f"{'scenario':<36} {'checkouts':>9} {'ok':>3} {'git':>6} {'lands':>6}"
            f" {'repl med':>8} {'max':>7} {'min':>7} {'1st peer':>8}")
    print(head)
    print("-" * len(head))
    medians = {}
    for key, label, _ in SCENARIOS:
        rows = load(results, key)
        if not rows:
            print(f"{label:<36} {'(not run)':>9}")
            continue
        ok = [r for r in rows if r["status"] == "ok"]

        def med(field):
            values = [r[field] for r in rows if r.get(field, math.nan) == r.get(field, math.nan)]
            return statistics.median(values) if values else math.nan

        lat = [r["ms"] for r in rows if r["ms"] == r["ms"]]  # not NaN
        if lat:
            medians[key] = statistics.median(lat)
            print(f"{label:<36} {len(rows):>9} {len(ok):>3} {med('git_ms'):>6.0f}"
                  f" {med('land_ms'):>6.0f} {medians[key]:>8.0f} {max(lat):>7.0f}"
                  f" {min(lat):>7.0f} {med('first_ms'):>8.0f}")
        else:
            print(f"{label:<36} {len(rows):>9} {len(ok):>3}   (no checkout replicated)")
    print()
    print("milliseconds, medians unless said; all from just before `git checkout` on node 1:")
    print("git = until the checkout returned; lands = until a peer's first changed path;")
    print("repl = until BOTH peers held the branch's state of every changed path (median,")
    print("max, min); 1st peer = the same for the first peer to get there; ok = replicated,")
    print("and every changed path on the three nodes equal to the branch once quiet")
    print()
    if "gosyncd" in medians and "lsyncd" in medians and medians["gosyncd"] > 0:
        print(f"ratio of median times to replicated, lsyncd / gosyncd: "
              f"{medians['lsyncd'] / medians['gosyncd']:.1f}x")
        print()
    for key, label, unit in SCENARIOS:
        rows = load(results, key)
        if not rows:
            continue
        print(f"{label}:")
        if key == "gosyncd":
            exact = sum(1 for r in rows if r["requests"] == 2)
            print("  apply requests in the group per checkout:"
                  f" {span([r['requests'] for r in rows])}"
                  f"; exactly 2 (one per peer) in {exact} of {len(rows)} checkouts")
            print(f"  pushes per checkout: node 1 {span([r['node1_pushes'] for r in rows])},"
                  f" the peers {span([r['peer_pushes'] for r in rows])} (expected 2 and 0)")
            print(f"  operations applied per peer per checkout: "
                  f"{span([a for r in rows for a in r['applied']])}"
                  f" (paths that differ between A and B: {span([r['paths'] for r in rows])});"
                  f" conflicts: {span([r['conflicts'] for r in rows])}")
        else:
            print(f"  rsync runs per checkout, both targets together:"
                  f" {span([r['requests'] for r in rows])}")
        print("  every checkout (ms as above; start = UTC, to match the daemons' logs):")
        gos = key == "gosyncd"
        print(f"  {'#':>3} {'to':>2} {'start':>12} {'git':>5} {'lands':>6} {'repl':>6}"
              f" {'1st':>6} {unit:>14}"
              + (f" {'pushes n1/peers':>15} {'applied n2/n3':>13}" if gos else "") + "  status")
        for r in rows:
            extra = (f" {str(r['node1_pushes']) + '/' + str(r['peer_pushes']):>15}"
                     f" {'/'.join(str(a) for a in r['applied']):>13}") if gos else ""
            print(f"  {r['i']:>3} {r['to']:>2} {r.get('start', '-'):>12} {r['git_ms']:>5.0f}"
                  f" {r.get('land_ms', math.nan):>6.0f} {r['ms']:>6.0f} {r['first_ms']:>6.0f}"
                  f" {r['requests']:>14}{extra}  {r['status']}")
        print()


def main(argv):
    def run_checkouts(a):
        peers, rest = a[9:11], a[11:]
        if rest and rest[0] == "status":
            counters = Gosyncd(rest[1], rest[2], rest[3:])
        elif rest and rest[0] == "lsyncd":
            counters = Lsyncd(rest[1])
        else:
            sys.exit(__doc__)
        checkouts(a[0], a[1], int(a[2]), float(a[3]), float(a[4]), a[5], a[6], a[7], a[8],
                  peers, counters)

    run(argv, __doc__, {
        "mutate": lambda a: mutate(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5]),
        "manifest": lambda a: manifest(a[0], a[1]),
        "checkouts": run_checkouts,
        "status": lambda a: Gosyncd(a[0], a[1], a[2:]).show(),
        "table": lambda a: table(a[0]),
    })


if __name__ == "__main__":
    main(sys.argv)
