#!/usr/bin/env bash
# fuzz/run.sh: runs the fuzz targets with cargo fuzz (libFuzzer; needs the nightly
# toolchain and `cargo install cargo-fuzz`) for SECONDS_PER_TARGET seconds each (default
# 60), and prints how many executions ran clean. A crash stops it with libFuzzer's report
# and the input that caused it, kept under fuzz/artifacts/.
#
#   decode_batch   the wire decoder on arbitrary bytes: no panic, and what it accepts
#                  carries exactly the contents it announces, each hashing to its digest;
#   confine_path   the receiver's path validator on arbitrary strings: what it accepts is
#                  normalised, inside a configured directory and not excluded there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${SECONDS_PER_TARGET:-60}
for target in decode_batch confine_path; do
    log=$(mktemp)
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "FAIL: $target crashed (input kept under fuzz/artifacts/$target)"
        exit 1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}')
    echo "$target: ${runs:-?} executions in ${seconds} s, none failed"
    rm -f "$log"
done
