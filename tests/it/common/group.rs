//! Groups of real nodes on loopback addresses, started in the test's own process.

use gosyncd::group::{GroupSpec, LocalGroup};

use super::addresses::spec;

/// Starts `nodes` nodes with one directory `/etc/app`, on addresses of their own.
pub async fn start(nodes: usize) -> LocalGroup {
    start_with(spec(nodes)).await
}

/// Starts `nodes` daemons that watch `/etc/app` and push their edits, on addresses of
/// their own.
pub async fn watching(nodes: usize) -> LocalGroup {
    start_with(GroupSpec {
        watch: true,
        ..spec(nodes)
    })
    .await
}

pub async fn start_with(spec: GroupSpec) -> LocalGroup {
    LocalGroup::start(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} does not start: {e:#}"))
}
