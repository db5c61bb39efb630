//! Watching a running group: its counters, polling for a condition, and checking that
//! nothing happens for as long as a write would take to be pushed.

use std::time::Duration;

use gosyncd::group::{GroupNode, LocalGroup};
use gosyncd::protocol::StatusCounters;

use super::wait::{eventually_showing, holds_for};

/// The counters of a running node.
pub fn counters(node: &GroupNode) -> StatusCounters {
    node.stats()
        .unwrap_or_else(|| panic!("node {} is not running", node.addr))
}

/// The sum of one counter over the running nodes.
pub fn total(group: &LocalGroup, counter: impl Fn(&StatusCounters) -> u64) -> u64 {
    group
        .nodes
        .iter()
        .filter_map(GroupNode::stats)
        .map(|c| counter(&c))
        .sum()
}

/// Every node's counters, for failure messages.
pub fn describe(group: &LocalGroup) -> String {
    group
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match n.stats() {
            Some(c) => format!("node {i} ({}): {c:?}", n.addr),
            None => format!("node {i} ({}): not running in this process", n.addr),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `condition` holds, failing the test after `within` with every node's
/// counters.
pub async fn eventually_in(
    group: &LocalGroup,
    within: Duration,
    what: &str,
    condition: impl FnMut() -> bool,
) {
    eventually_showing(what, within, condition, || describe(group)).await;
}

/// Long enough for a write to be seen, settled and pushed had it been going to be: what
/// "nothing happened" is observed over. The longest a burst waits after its last event
/// is the settle window plus what a big burst or a vanished path adds to it (at most
/// 200 ms).
pub fn quiet_period(group: &LocalGroup) -> Duration {
    (group.nodes[0].config.debounce + Duration::from_millis(200)) * 2 + Duration::from_millis(300)
}

/// Checks `condition` all through the quiet period, failing as soon as it stops holding.
pub async fn holds_for_quiet_period(
    group: &LocalGroup,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    holds_for(what, quiet_period(group), || {
        condition().then_some(()).ok_or_else(|| describe(group))
    })
    .await;
}

/// Whether the file at `logical` holds exactly `bytes`.
pub fn holds(node: &GroupNode, logical: &str, bytes: impl AsRef<[u8]>) -> bool {
    std::fs::read(node.path(logical)).is_ok_and(|b| b == bytes.as_ref())
}

/// A resident-memory figure of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
