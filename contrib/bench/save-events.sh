#!/usr/bin/env bash
# save-events.sh: the inotify events that real editors and tools make when they save a
# file or change a tree, timed, to choose the watcher's settle window: a burst ends when
# every file written has been closed (IN_CLOSE_WRITE) or renamed into place
# (IN_MOVED_TO) and the settle window has passed with no new event. The window must be
# longer than any pause a tool makes while no file is open for writing, or one save
# becomes two bursts (and the first may catch a half-done save: a file renamed away
# before its new version is in place).
#
# What it builds (in a temporary directory under WORKDIR, removed on exit):
#   * one small watched tree per tool (a config file of 40 lines, or the trees below);
#   * a git work tree of 400 files in 20 directories (its git directory outside the
#     watched tree), branch A, and branch B with 300 files changed, 20 deleted and 20
#     added (5 of them in a new directory);
#   * a source tree of 200 files in 20 directories nested 3 deep, for rsync, and a tar
#     archive of another such tree;
#   * two versions of a tiny .deb (dpkg-deb --build) holding two conffiles and one plain
#     file in /etc/save-events-bench-NNNNN/, which is watched: version 1 is installed
#     first, the package purged (and the directory gone) on exit.
#
# What it measures: for each tool, RUNS runs. Before each run an unrecorded step puts
# things back (a new source file, a removed copy); then save_events_helper.py watches
# the tool's tree with inotify (recursively, through ctypes, adding watches for new
# directories as they appear) with gosyncd's mask (ATTRIB CREATE OPEN DELETE
# CLOSE_WRITE MODIFY MOVED_FROM MOVED_TO DELETE_SELF MOVE_SELF), runs the tool, and
# timestamps every event as it is read (time.monotonic_ns as each read(2) returns; the
# recorder runs at real-time priority, SCHED_FIFO, when allowed, the tools at the
# ordinary one) until the tool has exited and TAIL_MS passed with no event. The tools,
# and what they do each run:
#   vim        `script -qec "vim -c 'normal Ax' -c wq FILE"` (a pty; Debian's settings:
#              /etc/vim/vimrc and defaults.vim, no user vimrc): append x, save, quit
#   nano       nano on a pty (python's pty module): type x, ^O, Enter, ^X
#   emacs      emacs --batch FILE --eval '(progn (goto-char (point-max)) (insert "x")
#              (save-buffer))', backups on (the default: each run is a first save,
#              FILE renamed to FILE~)
#   sed        sed -i '$ s/$/x/' FILE
#   git        git checkout -q B, then A, ... (340 paths change each time)
#   rsync-dir  rsync -a of the 200-file tree into the watched tree (removed before)
#   rsync-file rsync -a of one file (new content) over an existing one
#   tar        tar -xf of a 200-file archive over its earlier extraction (tar unlinks
#              and recreates each file; every event is seen)
#   tar-new    the same into an empty directory: tar makes a directory's files within
#              microseconds of the directory, before any watcher can add a watch for
#              it, so most of their events are never seen (the gaps are then
#              unreliable; the report counts the files found when the watch was added)
#   dpkg-sim   dpkg's conffile sequence: FILE.dpkg-new written, fsynced, closed,
#              renamed over FILE
#   dpkg       dpkg -i --force-confnew of version 2, then 1, ... (the real thing, as root)
#   cp         cp NEW FILE (over an existing file)
#   install    install -m 644 NEW FILE
# For every run, from the trace: the span (first to last event), the largest gap between
# consecutive events during which no file was open for writing (a file is open for
# writing from its IN_MODIFY, or its IN_CREATE if it is not a directory, until its
# IN_CLOSE_WRITE, its rename away or its deletion), the same gap counted only between the
# first and the last change (every event but IN_OPEN, and the IN_OPEN that opened a file
# for writing: the last one before its IN_CLOSE_WRITE; a split outside the changes only
# parts reads from writes), the largest gap of all, the number of events. Printed: a
# table of medians, p95s (nearest rank) and maxima per tool, once with all events and
# once with the events on gosyncd's default editor excludes (swap files, backups, 4913,
# *.dpkg-new, ...) dropped first; the largest closed gap over all tools and runs; where
# each tool's largest gaps fell; one run's events per tool (the run with the largest
# closed gap in changes, excludes dropped).
#
# Run it from anywhere in the repository:
#     contrib/bench/save-events.sh
#     LOAD=1 contrib/bench/save-events.sh        # the same with every CPU kept busy
# Settings (environment, defaults): RUNS=20  LOAD=0 (K: K CPU-bound processes per CPU
# run for the duration, stress-ng --cpu K*NCPU, or `yes >/dev/null` when there is no
# stress-ng; LOAD=1 keeps every CPU busy, LOAD=2 twice over)  LOAD_DISK=0 (N: N
# stress-ng --hdd writers, 256 MB files in the temporary directory, for the duration: a
# busy disk makes every fsync slow)  TOOLS="vim nano emacs sed git rsync-dir rsync-file
# tar tar-new dpkg-sim dpkg cp install" (a subset, in any order)  TAIL_MS=300
# SHOW=40 (events listed per tool for big operations)  DPKG=1 (0: no real dpkg install)
# WORKDIR=/var/tmp (not /tmp: vim and emacs make no backup of files under /tmp or
# $TMPDIR, unlike in /etc, so the tools run without TMPDIR, TMP and TEMP)  KEEP=1 (keep
# the temporary directory: traces and logs).
# About 2 minutes with the defaults on 2 CPUs, plus installs. Needs bash, python3
# (standard library), script (util-linux), and the tools; when run as root on a
# Debian-like system, missing vim, nano, emacs-nox, git, rsync and stress-ng packages
# are installed with apt-get; a tool that is still missing is skipped with a message.
# The real dpkg install needs root and dpkg-deb. Every process the script starts is
# stopped when it exits.

# The tools' snippets are single-quoted on purpose: the helper runs them with bash, with
# TREE, RUN, FIX and the rest in their environment.
# shellcheck disable=SC2016
set -euo pipefail
export LC_ALL=C

RUNS=${RUNS:-20}
LOAD=${LOAD:-0}
LOAD_DISK=${LOAD_DISK:-0}
TOOLS=${TOOLS:-vim nano emacs sed git rsync-dir rsync-file tar tar-new dpkg-sim dpkg cp install}
TAIL_MS=${TAIL_MS:-300}
SHOW=${SHOW:-40}
DPKG=${DPKG:-1}
WORKDIR=${WORKDIR:-/var/tmp}
KEEP=${KEEP:-0}
SEED=20250601
PKG=gosyncd-save-events-bench

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=contrib/bench/lib.sh
. "$here/lib.sh"
seh=(python3 "$here/save_events_helper.py")

for v in RUNS TAIL_MS SHOW LOAD LOAD_DISK; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
[ "$RUNS" -ge 1 ] || die "RUNS must be at least 1"
WORKDIR=$(cd "$WORKDIR" && pwd -P) || die "no directory $WORKDIR"
case "$WORKDIR/" in
/tmp/* | "${TMPDIR:-/tmp}"/*)
    die "WORKDIR=$WORKDIR is under /tmp or \$TMPDIR, where vim and emacs make no backups" ;;
esac

# want COMMAND PACKAGE: true when COMMAND is there; when it is missing and the script
# runs as root on a Debian-like system, PACKAGE is installed with apt-get first.
want() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing $2"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "$2" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; } || true
    fi
    command -v "$1" >/dev/null 2>&1
}

need python3 python3
need script bsdutils

# git as the benchmark runs it: no user or system configuration, a fixed identity.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

# ------------------------------------------------------------------ workspace, cleanup

etcdir=""
# end_jobs (called by lib.sh's cleanup on exit): the background load, then the test
# package and its directory under /etc.
end_jobs() {
    local pid
    for pid in $(jobs -p); do stop "$pid"; done
    if [ -n "$etcdir" ]; then
        dpkg --purge "$PKG" >>"$logs/dpkg-purge.log" 2>&1 || log "dpkg --purge $PKG failed"
        case "$etcdir" in /etc/save-events-bench-*) rm -rf "$etcdir" ;; esac
    fi
}

TMPDIR=$WORKDIR workspace save-events '*.log'
traces="$work/traces"
trees="$work/trees"
fix="$work/fixtures"
mkdir -p "$traces" "$trees" "$fix" "$work/home"

# The tools' environment: an empty home (no user settings, so the system's defaults),
# no temporary directory variables (see WORKDIR), a terminal type for the editors.
export HOME="$work/home" FIX="$fix" HELPER="$here/save_events_helper.py" LOGS="$logs"
unset TMPDIR TMP TEMP XDG_CONFIG_HOME EDITOR VISUAL
case "${TERM:-dumb}" in dumb | "") export TERM=xterm ;; esac

# ------------------------------------------------------------------------------ tools

skipped=()
ran=()
n=0
versions=()

# version TOOL COMMAND...: the first line COMMAND prints, for the header.
version() {
    local tool=$1 line
    shift
    [[ " ${versions[*]} " != *" $tool: "* ]] || return 0
    line=$("$@" 2>&1 | head -n 1) || true
    versions+=("$tool: $line")
}

# measure TOOL TREE PREP OP: RUNS recorded runs (see the helper's `trace`).
measure() {
    local tool=$1 tree=$2 prep=$3 op=$4
    n=$((n + 1))
    log "$tool: $RUNS runs (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    "${seh[@]}" trace "$traces/$(printf %02d "$n")-$tool.jsonl" "$tool" "$RUNS" "$TAIL_MS" \
        "$tree" "$prep" "$op" || die "$tool: the recording failed"
    ran+=("$tool")
}

skip() {
    log "$1: SKIPPED: $2"
    skipped+=("$1: $2")
}

tool_vim() {
    want vim vim || { skip vim "no vim"; return; }
    version vim vim --version
    local t="$trees/vim"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" vim
    measure vim "$t" : 'cd "$TREE" && script -qec "vim -c \"normal Ax\" -c wq haproxy.cfg" /dev/null'
}

tool_nano() {
    want nano nano || { skip nano "no nano"; return; }
    version nano nano --version
    local t="$trees/nano"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" nano
    measure nano "$t" : 'cd "$TREE" && python3 "$HELPER" nano haproxy.cfg'
}

tool_emacs() {
    want emacs emacs-nox || { skip emacs "no emacs"; return; }
    version emacs emacs --version
    local t="$trees/emacs"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" emacs
    measure emacs "$t" : 'cd "$TREE" && emacs --batch haproxy.cfg --eval "(progn (goto-char (point-max)) (insert \"x\") (save-buffer))"'
}

tool_sed() {
    version sed sed --version
    local t="$trees/sed"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" sed
    measure sed "$t" : 'sed -i "\$ s/\$/x/" "$TREE/haproxy.cfg"'
}

tool_git() {
    want git git || { skip git "no git"; return; }
    version git git --version
    local t="$trees/git"
    export GITDIR="$work/repo.git"
    g() { git --git-dir="$GITDIR" --work-tree="$t" "$@"; }
    mkdir -p "$t"
    "${seh[@]}" files "$t" 400 20 2 "$SEED"
    git init -q --bare "$GITDIR"
    git --git-dir="$GITDIR" config core.bare false
    git --git-dir="$GITDIR" symbolic-ref HEAD refs/heads/A
    g add -A
    g commit -q -m "branch A"
    g checkout -q -b B
    # Branch B's edits, as checkout-burst.sh makes them.
    python3 "$here/checkout_helper.py" mutate "$t" 300 20 20 5 "$SEED"
    g add -A
    g commit -q -m "branch B"
    g checkout -q A
    [ -z "$(g status --porcelain)" ] || die "git: the work tree is not clean on branch A"
    log "git: $(g diff --name-only --no-renames A B | wc -l) paths differ between the branches"
    measure git "$t" : \
        'git --git-dir="$GITDIR" --work-tree="$TREE" checkout -q "$([ $((RUN % 2)) = 0 ] && echo B || echo A)"'
}

tool_rsync_dir() {
    want rsync rsync || { skip rsync-dir "no rsync"; return; }
    version rsync rsync --version
    local t="$trees/rsync-dir"
    mkdir -p "$t" "$fix/rsync-src"
    "${seh[@]}" files "$fix/rsync-src" 200 20 3 "$SEED"
    measure rsync-dir "$t" 'rm -rf "$TREE/copy"' 'rsync -a "$FIX/rsync-src/" "$TREE/copy/"'
}

tool_rsync_file() {
    want rsync rsync || { skip rsync-file "no rsync"; return; }
    version rsync rsync --version
    local t="$trees/rsync-file"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" rsync-file
    # New content and a distinct mtime, so that rsync's quick check sees a change.
    measure rsync-file "$t" \
        'python3 "$HELPER" text "$FIX/rsync.cfg" "rsync-$RUN" && touch -d "@$((1700000000 + RUN))" "$FIX/rsync.cfg"' \
        'rsync -a "$FIX/rsync.cfg" "$TREE/haproxy.cfg"'
}

# tar_archive: $fix/tree.tar, 200 files in 20 directories nested 3 deep, all under x/.
tar_archive() {
    [ ! -e "$fix/tree.tar" ] || return 0
    version tar tar --version
    mkdir -p "$fix/tar/x"
    "${seh[@]}" files "$fix/tar/x" 200 20 3 "$SEED-tar"
    tar -cf "$fix/tree.tar" -C "$fix/tar" x
}

tool_tar() {
    tar_archive
    local t="$trees/tar"
    mkdir -p "$t"
    tar -xf "$fix/tree.tar" -C "$t"
    measure tar "$t" : 'tar -xf "$FIX/tree.tar" -C "$TREE"'
}

tool_tar_new() {
    tar_archive
    local t="$trees/tar-new"
    mkdir -p "$t"
    measure tar-new "$t" 'rm -rf "$TREE/x"' 'tar -xf "$FIX/tree.tar" -C "$TREE"'
}

tool_dpkg_sim() {
    local t="$trees/dpkg-sim"
    mkdir -p "$t"
    "${seh[@]}" text "$t/bench.conf" dpkg-sim
    measure dpkg-sim "$t" : 'python3 "$HELPER" dpkg-sim "$TREE/bench.conf" "$RUN"'
}

# build_deb VERSION: $work/debs/vVERSION.deb, conffiles bench.conf and conf.d/extra.conf
# and a plain file, data.list, in $etcdir, contents that differ between versions.
build_deb() {
    local v=$1 d="$work/debs/v$1"
    mkdir -p "$d/DEBIAN" "$d$etcdir/conf.d"
    cat >"$d/DEBIAN/control" <<EOF
Package: $PKG
Version: $v
Architecture: all
Maintainer: gosyncd bench <bench@localhost>
Description: save-events.sh test package (purged when the script exits)
EOF
    printf '%s\n' "$etcdir/bench.conf" "$etcdir/conf.d/extra.conf" >"$d/DEBIAN/conffiles"
    "${seh[@]}" text "$d$etcdir/bench.conf" "deb-$v-a" 30
    "${seh[@]}" text "$d$etcdir/conf.d/extra.conf" "deb-$v-b" 10
    "${seh[@]}" text "$d$etcdir/data.list" "deb-$v-c" 50
    dpkg-deb --root-owner-group --build "$d" "$work/debs/v$v.deb" >>"$logs/dpkg-deb.log" 2>&1 ||
        die "dpkg-deb --build failed: $(tail -n 5 "$logs/dpkg-deb.log")"
}

tool_dpkg() {
    [ "$DPKG" = 1 ] || { skip dpkg "DPKG=0"; return; }
    [ "$(id -u)" = 0 ] || { skip dpkg "not root (dpkg -i needs root)"; return; }
    if ! command -v dpkg-deb >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
        skip dpkg "no dpkg"
        return
    fi
    version dpkg dpkg --version
    if dpkg-query -W "$PKG" >/dev/null 2>&1; then
        log "dpkg: purging $PKG, left installed by an earlier run"
        dpkg --purge "$PKG" >>"$logs/dpkg-purge.log" 2>&1 || { skip dpkg "cannot purge an old $PKG"; return; }
    fi
    local suffix=$RANDOM$RANDOM
    [ ! -e "/etc/save-events-bench-$suffix" ] || { skip dpkg "/etc/save-events-bench-$suffix exists"; return; }
    etcdir="/etc/save-events-bench-$suffix"
    export DEBS="$work/debs"
    build_deb 1
    build_deb 2
    if ! dpkg -i "$DEBS/v1.deb" >"$logs/dpkg-install-v1.log" 2>&1; then
        skip dpkg "dpkg -i of version 1 failed: $(tail -n 3 "$logs/dpkg-install-v1.log" | paste -sd' ')"
        return
    fi
    measure dpkg "$etcdir" : \
        'dpkg -i --force-confnew "$DEBS/v$(( RUN % 2 == 0 ? 2 : 1 )).deb"'
}

tool_cp() {
    local t="$trees/cp"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" cp
    measure cp "$t" 'python3 "$HELPER" text "$FIX/cp.cfg" "cp-$RUN"' 'cp "$FIX/cp.cfg" "$TREE/haproxy.cfg"'
}

tool_install() {
    version install install --version
    local t="$trees/install"
    mkdir -p "$t"
    "${seh[@]}" text "$t/haproxy.cfg" install
    measure install "$t" 'python3 "$HELPER" text "$FIX/install.cfg" "install-$RUN"' \
        'install -m 644 "$FIX/install.cfg" "$TREE/haproxy.cfg"'
}

# ------------------------------------------------------------------------------- load

load_desc="quiet (no load started by the script)"
if [ "$LOAD" -gt 0 ]; then
    hogs=$((LOAD * $(nproc)))
    if want stress-ng stress-ng; then
        stress-ng --cpu "$hogs" --timeout 3600 >"$logs/stress-ng.log" 2>&1 &
        load_desc="loaded: stress-ng --cpu $hogs for the duration"
    else
        for ((k = 0; k < hogs; k++)); do yes >/dev/null & done
        load_desc="loaded: $hogs x 'yes >/dev/null' for the duration"
    fi
fi
if [ "$LOAD_DISK" -gt 0 ]; then
    want stress-ng stress-ng || die "LOAD_DISK needs stress-ng"
    mkdir -p "$work/hdd"
    stress-ng --hdd "$LOAD_DISK" --hdd-bytes 256M --temp-path "$work/hdd" --timeout 3600 \
        >"$logs/stress-ng-hdd.log" 2>&1 &
    disk="stress-ng --hdd $LOAD_DISK --hdd-bytes 256M (disk writes) for the duration"
    if [ "$LOAD" -gt 0 ]; then load_desc+=", $disk"; else load_desc="loaded: $disk"; fi
fi
if [ "$LOAD" -gt 0 ] || [ "$LOAD_DISK" -gt 0 ]; then sleep 2; fi

# ------------------------------------------------------------------------------- runs

for tool in $TOOLS; do
    case "$tool" in
    vim | nano | emacs | sed | git | tar | cp | install) "tool_$tool" ;;
    rsync-dir | rsync-file | tar-new | dpkg-sim) "tool_${tool//-/_}" ;;
    dpkg) tool_dpkg ;;
    *) die "unknown tool $tool (TOOLS)" ;;
    esac
done

# ----------------------------------------------------------------------------- report

echo
echo "save-events.sh: $RUNS runs per tool; $(nproc) CPUs; $(uname -sr);" \
    "trees on $(df -PT "$work" | awk 'NR == 2 { print $2 }') ($WORKDIR)$([ -z "$etcdir" ] || echo ", dpkg's in $etcdir");" \
    "$load_desc; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "vim is driven through a pty by script -qec \"vim -c 'normal Ax' -c wq FILE\" (Debian's defaults," \
    "no user vimrc); nano through a pty by the helper's nano (x, ^O, Enter, ^X); emacs --batch with its default backups"
printf '  %s\n' "${versions[@]}"
echo
[ "${#ran[@]}" -eq 0 ] || "${seh[@]}" report "$traces" "$SHOW"
if [ "${#skipped[@]}" -gt 0 ]; then
    echo
    printf 'SKIPPED: %s\n' "${skipped[@]}"
fi
