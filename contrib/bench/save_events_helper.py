#!/usr/bin/env python3
"""Helpers for save-events.sh: the inotify recorder, fixtures, the scripted nano session,
the dpkg conffile sequence and the report. Standard library only (inotify through
ctypes).

    save_events_helper.py trace OUT TOOL RUNS TAIL_MS TREE PREP OP
                        RUNS times: run the bash snippet PREP (not recorded), then watch
                        TREE recursively and run the bash snippet OP, recording every
                        event until OP has exited and TAIL_MS passed with no event;
                        one JSON line per run appended to OUT
    save_events_helper.py files DIR FILES DIRS DEPTH SEED
                        FILES small config-like text files in DIRS directories nested
                        DEPTH deep under DIR
    save_events_helper.py text FILE SEED [LINES]
                        (re)write FILE with config-like text drawn from SEED
    save_events_helper.py nano FILE     type a character, ^O, Enter, ^X in nano (a pty)
    save_events_helper.py dpkg-sim FILE VERSION
                        dpkg's conffile sequence: FILE.dpkg-new written, fsynced,
                        closed, renamed to FILE
    save_events_helper.py report DIR [SHOW]
                        from DIR/*.jsonl: the tables, where the largest gaps fell, and
                        one run per tool event by event (all of a small run, the first
                        SHOW events of a big one, default 40)
"""

import ctypes
import ctypes.util
import errno
import fcntl
import fnmatch
import json
import math
import os
import pty
import random
import select
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time

# ---------------------------------------------------------------------------- inotify

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

# What gosyncd's watcher listens to.
MASK = (IN_ATTRIB | IN_CREATE | IN_OPEN | IN_DELETE | IN_CLOSE_WRITE | IN_MODIFY
        | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)

NAMES = [
    (IN_ACCESS, "ACCESS"), (IN_MODIFY, "MODIFY"), (IN_ATTRIB, "ATTRIB"),
    (IN_CLOSE_WRITE, "CLOSE_WRITE"), (IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"),
    (IN_OPEN, "OPEN"), (IN_MOVED_FROM, "MOVED_FROM"), (IN_MOVED_TO, "MOVED_TO"),
    (IN_CREATE, "CREATE"), (IN_DELETE, "DELETE"), (IN_DELETE_SELF, "DELETE_SELF"),
    (IN_MOVE_SELF, "MOVE_SELF"), (IN_UNMOUNT, "UNMOUNT"), (IN_Q_OVERFLOW, "Q_OVERFLOW"),
    (IN_IGNORED, "IGNORED"), (IN_ISDIR, "ISDIR"),
]

# gosyncd's default excludes (EDITOR_EXCLUDES in src/config/excludes.rs), matched
# against file names; keep in step with that list.
EDITOR_EXCLUDES = [
    ".*.swp", ".*.swx", "*~", "4913", ".#*", "#*#", "*.dpkg-new", "*.dpkg-tmp",
    "*.dpkg-old", "*.dpkg-dist", "*.dpkg-bak", "*.ucf-new", "*.ucf-old", "*.ucf-dist",
    "*.rpmnew", "*.rpmsave", "*.rpmorig",
]

EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then name)


def names(mask):
    return "|".join(n for bit, n in NAMES if mask & bit) or hex(mask)


class Inotify:
    """One inotify instance watching a tree recursively. Directories that appear
    (created, or moved in from outside) are watched as soon as their event is read, and
    scanned for directories made before their watch was added. Scanning opens the
    directory, which is itself an IN_OPEN event on it: those are counted and dropped
    (`self_opens`), they are the recorder's, not the tool's."""

    def __init__(self, root):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        self.libc.read.restype = ctypes.c_ssize_t
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.buf = ctypes.create_string_buffer(1 << 18)
        self.root = root
        self.paths = {}  # wd -> path relative to root ("" for the root)
        self.expect = {}  # (wd, name) -> IN_OPEN|IN_ISDIR events our own scans will make
        self.moved_dirs = {}  # cookie -> relative path of a directory moved away
        self.self_opens = 0
        self.found = 0  # files already in a new directory when its watch was added
        self.overflow = False
        # The initial tree: walked first, watched after, so that walking makes no events.
        dirs = [root] + [os.path.join(d, n) for d, ns, _ in os.walk(root) for n in ns]
        for d in dirs:
            self.add(os.path.relpath(d, root) if d != root else "")

    def close(self):
        os.close(self.fd)

    def add(self, rel):
        path = os.path.join(self.root, rel) if rel else self.root
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), MASK | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):  # gone again already
                return None
            raise OSError(err, f"inotify_add_watch {path}")
        self.paths[wd] = rel
        return wd

    def wd_of(self, rel):
        for wd, p in self.paths.items():
            if p == rel:
                return wd
        return None

    def add_tree(self, rel):
        """Watch a new directory and, depth first, the directories already in it."""
        wd = self.add(rel)
        if wd is None:
            return
        parent = self.wd_of(os.path.dirname(rel))
        for key in ((wd, ""), (parent, os.path.basename(rel))):
            self.expect[key] = self.expect.get(key, 0) + 1
        try:
            entries = list(os.scandir(os.path.join(self.root, rel)))
        except OSError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                self.add_tree(os.path.join(rel, e.name))
            else:
                self.found += 1

    def read(self):
        """The events ready now, as (time read, mask, path relative to root, cookie).
        Each read(2) is timed as soon as it returns, before its events are handled."""
        out = []
        while True:
            n = self.libc.read(self.fd, self.buf, len(self.buf))
            now = time.monotonic_ns()
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EAGAIN:
                    return out
                if err == errno.EINTR:
                    continue
                raise OSError(err, "read inotify")
            data = self.buf.raw[:n]
            off = 0
            while off < n:
                wd, mask, cookie, length = EVENT.unpack_from(data, off)
                name = data[off + EVENT.size: off + EVENT.size + length].split(b"\0", 1)[0]
                off += EVENT.size + length
                out.extend((now,) + e for e in self.handle(wd, mask, cookie, os.fsdecode(name)))

    def handle(self, wd, mask, cookie, name):
        if mask & IN_Q_OVERFLOW:
            self.overflow = True
            return [(mask, "", 0)]
        base = self.paths.get(wd)
        if base is None:
            return []  # a watch already removed
        rel = os.path.join(base, name) if name else base
        if mask & IN_OPEN and mask & IN_ISDIR and self.expect.get((wd, name)):
            self.expect[(wd, name)] -= 1
            self.self_opens += 1
            return []
        if mask & IN_ISDIR:
            if mask & IN_CREATE:
                self.add_tree(rel)
            elif mask & IN_MOVED_FROM:
                self.moved_dirs[cookie] = rel
            elif mask & IN_MOVED_TO:
                old = self.moved_dirs.pop(cookie, None)
                if old is None:  # moved in from outside the tree
                    self.add_tree(rel)
                else:  # moved inside the tree: the watches stay, their paths change
                    for w, p in list(self.paths.items()):
                        if p == old or p.startswith(old + "/"):
                            self.paths[w] = rel + p[len(old):]
        if mask & IN_IGNORED:
            self.paths.pop(wd, None)
        return [(mask, rel, cookie)]


def ordinary():
    """In the tools' processes: back to the ordinary scheduling policy."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def trace(out, tool, runs, tail_ms, tree, prep, op):
    """RUNS recorded runs of OP (each after an unrecorded PREP), appended to OUT. The
    recorder runs at real-time priority (SCHED_FIFO) when it may, so that the time it
    stamps on an event is when the event was made, not when a busy machine let the
    recorder run; the tools run at the ordinary policy."""
    logdir = os.environ.get("LOGS", os.path.dirname(out))
    env = dict(os.environ, TREE=tree)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        realtime = True
    except OSError:
        realtime = False
    for run in range(runs):
        env["RUN"] = str(run)
        with open(os.path.join(logdir, f"{tool}.prep.log"), "a") as log:
            if subprocess.run(["bash", "-c", prep], env=env, stdout=log,
                              stderr=subprocess.STDOUT, preexec_fn=ordinary).returncode:
                sys.exit(f"{tool}: run {run}: the preparation failed (see {log.name}):\n"
                         + tail(log.name))
        ino = Inotify(tree)
        events = []  # [ns since start, mask, path, cookie]
        late = 0
        logname = os.path.join(logdir, f"{tool}.log")
        with open(logname, "a") as log:
            log.write(f"--- run {run}\n")
            log.flush()
            start = time.monotonic_ns()
            proc = subprocess.Popen(["bash", "-c", op], env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=ordinary)
            poller = select.poll()
            poller.register(ino.fd, select.POLLIN)
            exited = None
            deadline = start + 120 * 10**9
            while True:
                ready = poller.poll(5)
                if ready:
                    got = ino.read()
                    for t, mask, rel, cookie in got:
                        events.append([t - start, mask, rel, cookie])
                    if exited is not None:
                        late += len(got)
                now = time.monotonic_ns()
                if exited is None and proc.poll() is not None:
                    exited = now - start
                if exited is not None:
                    last = max(exited, events[-1][0] if events else 0)
                    if now - start - last >= tail_ms * 10**6:
                        break
                elif now > deadline:
                    proc.kill()
                    proc.wait()
                    sys.exit(f"{tool}: run {run}: still running after 120 s")
        ino.close()
        if proc.returncode:
            sys.exit(f"{tool}: run {run}: exit status {proc.returncode} (see {logname}):\n"
                     + tail(logname))
        if not events:
            sys.exit(f"{tool}: run {run}: no event at all in {tree}")
        record = {"tool": tool, "run": run, "realtime": realtime,
                  "exited_ns": exited, "late": late,
                  "self_opens": ino.self_opens, "found": ino.found,
                  "overflow": ino.overflow, "events": events}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


def tail(path, n=15):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


# ---------------------------------------------------------------------------- fixtures

WORDS = ["server", "listen", "timeout", "backend", "option", "maxconn", "bind", "user",
         "group", "log", "retries", "balance", "check", "inter", "rise", "fall"]


def text(rng, lines):
    return "".join(f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.randrange(1 << 20)}\n"
                   for _ in range(lines))


def write_text(path, seed, lines=40):
    rng = random.Random(f"text-{seed}")
    with open(path, "w") as f:
        f.write(text(rng, lines))


def files(root, count, ndirs, depth, seed):
    """COUNT files of 5 to 80 lines spread over NDIRS directories, nested DEPTH deep
    (d00/d00.1/d00.1.2 ...)."""
    rng = random.Random(f"files-{seed}")
    dirs = []
    for i in range(ndirs):
        parts = [f"d{i:02d}"]
        for k in range(1, depth):
            parts.append(f"{parts[-1]}.{(i + k) % 3}")
        dirs.append(os.path.join(*parts[: 1 + i % depth]))
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for n in range(count):
        path = os.path.join(root, dirs[n % ndirs], f"f{n:04d}.conf")
        with open(path, "w") as f:
            f.write(text(rng, rng.randrange(5, 80)))


# ---------------------------------------------------------------------------- drivers


def nano(path):
    """nano on a pty: wait for its screen, type `x`, ^O, Enter (keep the name), ^X."""
    pid, fd = pty.fork()
    if pid == 0:  # a screen size (a new pty has none) and a terminal type nano knows
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        if os.environ.get("TERM", "dumb") in ("", "dumb"):
            os.environ["TERM"] = "xterm"
        os.execvp("nano", ["nano", path])
    seen = b""

    def until(needle, timeout=10.0):
        nonlocal seen
        end = time.monotonic() + timeout
        while needle not in seen:
            left = end - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                sys.exit(f"nano: no {needle!r} on its screen after {timeout} s; "
                         f"last output: {seen[-300:]!r}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: nano exited
                    chunk = b""
                if not chunk:
                    break
                seen += chunk
        found = needle in seen
        seen = b""
        return found

    until(b"^X")  # the help lines: the screen is drawn
    os.write(fd, b"x")
    os.write(fd, b"\x0f")  # ^O, Write Out
    until(b"Write")  # "File Name to Write: "
    os.write(fd, b"\r")
    until(b"Wrote")
    os.write(fd, b"\x18")  # ^X, Exit: nano asks nothing, the buffer is saved
    end = time.monotonic() + 10
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:
                break
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


def dpkg_sim(path, version):
    """What dpkg does with a conffile whose new version it installs: extract it beside
    the live file as FILE.dpkg-new, fsync it, close it, rename it over FILE."""
    new = path + ".dpkg-new"
    rng = random.Random(f"dpkg-{version}")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, text(rng, 30).encode())
    os.fsync(fd)
    os.close(fd)
    os.rename(new, path)


# ---------------------------------------------------------------------------- analysis


def excluded(rel):
    base = os.path.basename(rel)
    return any(fnmatch.fnmatchcase(base, g) for g in EDITOR_EXCLUDES)


def analyze(events, drop_excluded=False):
    """The figures of one run. Open for writing: IN_MODIFY or IN_CREATE of a
    non-directory seen, and no IN_CLOSE_WRITE, rename away or deletion since. A closed
    gap: one between two consecutive events with no file open for writing after the
    first. `inner`: the largest closed gap between the first and the last event that is
    not an IN_OPEN (the changes; a split outside them only parts reads from writes)."""
    kept = [e for e in events if not (e[1] & (IN_IGNORED | IN_Q_OVERFLOW))]
    # pos: each event's place among all the (kept) events, for the raw listing.
    pos = [i for i, e in enumerate(kept) if not (drop_excluded and excluded(e[2]))]
    evs = [kept[i] for i in pos]
    opened = set()
    open_after = []
    for _, mask, rel, _ in evs:
        isdir = mask & IN_ISDIR
        # A directory is never open for writing (IN_MODIFY|IN_ISDIR: its mtime set alone).
        if mask & (IN_CREATE | IN_MODIFY) and not isdir:
            opened.add(rel)
        if mask & IN_CLOSE_WRITE:
            opened.discard(rel)
        if mask & (IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF):
            opened.discard(rel)
            if isdir or mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                prefix = rel + "/" if rel else ""
                opened -= {p for p in opened if p.startswith(prefix)}
        open_after.append(len(opened))
    res = {"n": len(evs), "span": 0.0, "closed": 0.0, "at": None, "inner": 0.0,
           "inner_at": None, "gap": 0.0, "open_end": sorted(opened), "evs": evs,
           "open_after": open_after, "pos": pos}
    if not evs:
        return res
    res["span"] = (evs[-1][0] - evs[0][0]) / 1e6
    # The changes: every event but IN_OPEN, and the IN_OPENs that opened a file for
    # writing, known afterwards: the last IN_OPEN of a file before its IN_CLOSE_WRITE.
    # (nano and cp open the file with O_TRUNC, which makes no event of its own: the file
    # is empty until their first write's IN_MODIFY.)
    changes = []
    last_open = {}
    for i, (_, mask, rel, _) in enumerate(evs):
        if mask & ~IN_ISDIR == IN_OPEN:
            last_open[rel] = i
            continue
        changes.append(i)
        if mask & IN_CLOSE_WRITE and rel in last_open:
            changes.append(last_open.pop(rel))
        elif mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
            last_open.pop(rel, None)
    first, last = (min(changes), max(changes)) if changes else (0, 0)
    for i in range(len(evs) - 1):
        gap = (evs[i + 1][0] - evs[i][0]) / 1e6
        res["gap"] = max(res["gap"], gap)
        if open_after[i]:
            continue
        if gap > res["closed"]:
            res["closed"], res["at"] = gap, i
        if first <= i < last and gap > res["inner"]:
            res["inner"], res["inner_at"] = gap, i
    return res


def p95(values):
    """Nearest rank."""
    s = sorted(values)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def between(a, key):
    """Where gap KEY is; when the event that ends it came in a large read, says so: the
    recorder was then waiting for a CPU while the tool went on, and part of the gap is
    the recorder's."""
    i = a[key]
    if i is None:
        return ""
    e1, e2 = a["evs"][i], a["evs"][i + 1]
    batch = sum(1 for e in a["evs"] if e[0] == e2[0])
    late = f", the second read with {batch - 1} later events" if batch >= 10 else ""
    return (f", between {names(e1[1])} {e1[2] or '.'} and {names(e2[1])} {e2[2] or '.'}"
            f"{late}")


def report(tdir, show):
    per_tool = []
    for fname in sorted(f for f in os.listdir(tdir) if f.endswith(".jsonl")):
        with open(os.path.join(tdir, fname)) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        if recs:
            per_tool.append((recs[0]["tool"], recs))
    if not per_tool:
        print("no traces")
        return
    rt = [r.get("realtime") for _, recs in per_tool for r in recs]
    print("The recorder ran at " + ("real-time priority (SCHED_FIFO 10) in every run."
                                    if all(rt) else
                                    f"the ordinary priority in {rt.count(False)} of {len(rt)}"
                                    " runs (not allowed SCHED_FIFO): on a busy machine part"
                                    " of a gap can be the recorder's wait for a CPU."))
    print()
    variants = (
        (False, "All events (the watch mask):"),
        (True, "The same with the events on gosyncd's default editor excludes dropped first "
               "(*~, .*.swp, 4913, .#*, *.dpkg-new, ...; EDITOR_EXCLUDES):"),
    )
    for drop, title in variants:
        print(title)
        print(f"{'':<11} {'':>4} {'events':>6} | {'span ms':^13} | {'closed gap ms':^20} | "
              f"{'closed gap in changes':^21} | {'any gap ms':^13}")
        head = (f"{'tool':<11} {'runs':>4} {'med':>6} | {'med':>6} {'max':>6} | "
                f"{'med':>6} {'p95':>6} {'max':>6} | {'med':>6} {'p95':>6} {'max':>7} | "
                f"{'med':>6} {'max':>6}")
        print(head)
        print("-" * len(head))
        worst = {"closed": None, "inner": None}
        seen_all = {"closed": None, "inner": None}  # over the tools whose events were all seen
        notes = []
        for tool, recs in per_tool:
            complete = not any(r["found"] or r["overflow"] for r in recs)
            an = [analyze(r["events"], drop) for r in recs]
            col = {k: [a[k] for a in an] for k in ("n", "span", "closed", "inner", "gap")}
            print(f"{tool:<11} {len(recs):>4} {statistics.median(col['n']):>6.0f} | "
                  f"{statistics.median(col['span']):>6.1f} {max(col['span']):>6.1f} | "
                  f"{statistics.median(col['closed']):>6.2f} {p95(col['closed']):>6.2f} "
                  f"{max(col['closed']):>6.2f} | "
                  f"{statistics.median(col['inner']):>6.2f} {p95(col['inner']):>6.2f} "
                  f"{max(col['inner']):>7.2f} | "
                  f"{statistics.median(col['gap']):>6.2f} {max(col['gap']):>6.2f}")
            for key in worst:
                k = max(range(len(an)), key=lambda i: an[i][key])
                for w in (worst, seen_all) if complete else (worst,):
                    if w[key] is None or an[k][key] > w[key][0]:
                        w[key] = (an[k][key], tool, recs[k]["run"], an[k])
            left = [a["open_end"] for a in an if a["open_end"]]
            if left:
                notes.append(f"{tool}: {len(left)} of {len(an)} runs end with a file never "
                             f"closed for writing ({', '.join(left[0][:3])})")
            if not drop:
                late = sum(r["late"] for r in recs)
                if late:
                    notes.append(f"{tool}: {late} events arrived after the tool had exited")
                if any(r["overflow"] for r in recs):
                    notes.append(f"{tool}: THE INOTIFY QUEUE OVERFLOWED: events were lost")
                found = sum(r["found"] for r in recs)
                if found:
                    notes.append(f"{tool}: {found} files were already in new directories "
                                 f"when their watch was added (their events were not seen)")
        for key, label in (("closed", "largest closed gap"),
                           ("inner", "largest closed gap in changes")):
            for w, which in ((worst, "all tools"),
                             (seen_all, "the tools whose every event was seen")):
                if w[key] is None or (w is seen_all and w[key][1:3] == worst[key][1:3]):
                    continue
                c, tool, run, a = w[key]
                at = between(a, "at" if key == "closed" else "inner_at")
                print(f"{label} over {which} and runs: {c:.2f} ms ({tool}, run {run}{at})")
        for n in notes:
            print(f"  note: {n}")
        print()

    print("Where the largest closed gaps in changes fell (editor excludes dropped), the"
          " three largest runs of each tool:")
    for tool, recs in per_tool:
        an = sorted(((analyze(r["events"], True), r["run"]) for r in recs),
                    key=lambda x: -x[0]["inner"])[:3]
        where = "; ".join(f"{a['inner']:.2f} ms (run {run}{between(a, 'inner_at')})"
                          for a, run in an if a["inner_at"] is not None)
        print(f"  {tool}: {where or 'none'}")

    print(f"\nRaw events, one run per tool: the run with the largest closed gap in changes"
          f" with the editor excludes dropped; all its events, or if there are more than"
          f" {2 * show} its first {show} and those around its largest closed gaps."
          f" ms: since the first event; gap: ms since the previous"
          f" event; open: files open for writing after the event, all events counted;"
          f" open-x: the same with the editor excludes dropped (x: an event on one).")
    for tool, recs in per_tool:
        pairs = [(analyze(r["events"]), analyze(r["events"], True), r) for r in recs]
        a, ax, r = max(pairs, key=lambda p: (p[1]["inner"], p[0]["closed"]))
        evs = a["evs"]
        open_x = {p: ax["open_after"][i] for i, p in enumerate(ax["pos"])}
        print(f"\n{tool}, run {r['run']}: {a['n']} events, span {a['span']:.1f} ms; largest "
              f"closed gap {a['closed']:.2f} ms, in changes {a['inner']:.2f} ms; with the "
              f"editor excludes dropped {ax['closed']:.2f} ms, in changes {ax['inner']:.2f} ms;"
              f" the tool exited at {(r['exited_ns'] - evs[0][0]) / 1e6:+.1f} ms")
        print(f"  {'ms':>9} {'gap':>8} {'open':>4} {'open-x':>6}   {'event':<22} path")
        # All of a small run; the first SHOW events of a big one.
        wanted = set(range(len(evs) if len(evs) <= 2 * show else show))
        marks = {}
        for res, key, label in ((a, "at", "largest closed gap"),
                                (a, "inner_at", "largest in changes"),
                                (ax, "at", "largest closed gap, excludes dropped"),
                                (ax, "inner_at", "largest in changes, excludes dropped")):
            if res[key] is None:
                continue
            i = res["pos"][res[key] + 1]  # the event that ends the gap
            wanted |= set(range(max(0, i - 4), min(len(evs), i + 4)))
            marks.setdefault(i, []).append(label)
        prev = None
        for i in sorted(wanted):
            if prev is not None and i != prev + 1:
                print(f"    ... {i - prev - 1} events")
            t = (evs[i][0] - evs[0][0]) / 1e6
            gap = (evs[i][0] - evs[i - 1][0]) / 1e6 if i else 0.0
            mark = f"   <== {'; '.join(marks[i])}" if i in marks else ""
            ox = f"{open_x[i]:>6}  " if i in open_x else "     - x"
            print(f"  {t:9.2f} {gap:+8.2f} {a['open_after'][i]:>4} {ox} "
                  f"{names(evs[i][1]):<22} {evs[i][2] or '.'}{mark}")
            prev = i
        if len(evs) - 1 not in wanted:
            print(f"    ... {len(evs) - 1 - max(wanted)} more events")


# ---------------------------------------------------------------------------- main


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "trace":
        out, tool, runs, tail_ms, tree, prep, op = args
        trace(out, tool, int(runs), int(tail_ms), tree, prep, op)
    elif cmd == "files":
        root, count, ndirs, depth, seed = args
        files(root, int(count), int(ndirs), int(depth), seed)
    elif cmd == "text":
        write_text(args[0], args[1], int(args[2]) if len(args) > 2 else 40)
    elif cmd == "nano":
        nano(args[0])
    elif cmd == "dpkg-sim":
        dpkg_sim(args[0], args[1])
    elif cmd == "report":
        report(args[0], int(args[1]) if len(args) > 1 else 40)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
