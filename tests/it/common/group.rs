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

/// [`watching`], built and not started: the test starts each node in its own way (in
/// this process, or as the real binary).
pub async fn built_watching(nodes: usize) -> LocalGroup {
    let spec = GroupSpec {
        watch: true,
        ..spec(nodes)
    };
    LocalGroup::build(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} is not built: {e:#}"))
}

pub async fn start_with(spec: GroupSpec) -> LocalGroup {
    LocalGroup::start(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} does not start: {e:#}"))
}
