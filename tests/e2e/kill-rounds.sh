#!/usr/bin/env bash
# kill-rounds.sh: the SIGKILL test of tests/faults.rs with more rounds than `cargo test`
# runs (20). Each round kills a receiving daemon in the middle of a 50-file batch (while
# the body arrives, at a temporary file, or at a rename), checks that every file is its
# old or its new content, restarts it, checks that no temporary file survived, and syncs.
#     tests/e2e/kill-rounds.sh [ROUNDS]      (default 200)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rounds=${1:-200}
GOSYNCD_KILL_ROUNDS=$rounds cargo test --quiet --test faults -- --exact \
    sigkill_of_a_receiver_mid_batch_leaves_each_file_old_or_new_and_the_next_sync_heals
echo "kill-rounds.sh: $rounds rounds, every file old or new, no temporary file survived"
