//! What a daemon keeps per path, counted by the allocator. A test binary of its own: it
//! counts every allocation of the process through its own global allocator, and holds
//! one test, so that nothing else allocates while it counts.

use std::alloc::System;

use gosyncd::baseline::Baseline;
use gosyncd::manifest::Manifest;
use gosyncd::protocol::{Content, Digest256, Entry};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed since `region` began (what a reallocation adds or gives
/// back is counted in these two as well).
fn live(region: &Region<System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

fn entry(n: usize) -> Entry {
    Entry {
        content: Content::File {
            size: n as u64,
            sha256: Digest256::of(&n.to_le_bytes()),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: n as i64,
    }
}

/// `count` paths as a tree of configuration files has them: 320 directories, the files
/// spread over them, in sorted order.
fn paths(count: usize) -> Vec<String> {
    let mut paths: Vec<String> = (0..count)
        .map(|n| {
            format!(
                "/etc/bench/app{:02}/conf{:02}.d/f{n:05}.conf",
                n % 20,
                n % 16
            )
        })
        .collect();
    paths.sort();
    paths
}

/// The bytes a baseline holds once built by `build`.
fn held_by(build: impl FnOnce() -> Baseline) -> (Baseline, isize) {
    let region = Region::new(GLOBAL);
    let baseline = build();
    let held = live(&region);
    (baseline, held)
}

/// A baseline of the paths of `all` whose index `keep` keeps, built at once from a scan
/// (made in the count, as a daemon's scan is), and the bytes it holds.
fn built_at_once(all: &[String], keep: impl Fn(usize) -> bool) -> (Baseline, isize) {
    held_by(|| {
        let scan: Manifest = all
            .iter()
            .enumerate()
            .filter(|(n, _)| keep(*n))
            .map(|(n, p)| (p.as_str().into(), entry(n)))
            .collect();
        Baseline::new(scan)
    })
}

/// A deterministic shuffle (a linear congruential generator drives Fisher-Yates).
fn shuffled(mut paths: Vec<String>) -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..paths.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        paths.swap(i, (state >> 33) as usize % (i + 1));
    }
    paths
}

#[test]
fn a_baseline_filled_one_path_at_a_time_holds_about_what_one_built_at_once_holds() {
    const COUNT: usize = 20_000;
    let all = paths(COUNT);
    let (_built, built) = built_at_once(&all, |_| true);
    let per_path = built as f64 / COUNT as f64;
    eprintln!("built from a scan: {built} bytes, {per_path:.0} per path");
    assert!(
        per_path > 100.0,
        "a row and its path are more than 100 bytes"
    );

    // As the batches of an initial sync come: in order, one path at a time.
    let (in_order, received) = held_by(|| {
        let baseline = Baseline::new(Manifest::new());
        for (n, path) in all.iter().enumerate() {
            baseline.record(path, Some(entry(n)));
        }
        baseline
    });
    eprintln!("recorded in order: {received} bytes");
    assert!(
        (received as f64) < built as f64 * 1.1,
        "recorded in order, {received} bytes; built at once, {built}"
    );

    // Paths coming in any order.
    let (_scattered, scattered) = held_by(|| {
        let baseline = Baseline::new(Manifest::new());
        for path in shuffled(all.clone()) {
            let n = all.binary_search(&path).expect("a path of the list");
            baseline.record(&path, Some(entry(n)));
        }
        baseline
    });
    eprintln!("recorded in any order: {scattered} bytes");
    assert!(
        (scattered as f64) < built as f64 * 1.2,
        "recorded in any order, {scattered} bytes; built at once, {built}"
    );

    // Two thirds of the paths removed, one at a time (a tree deleted): what stays is
    // held as compactly as the same rows built at once.
    let region = Region::new(GLOBAL);
    for (n, path) in all.iter().enumerate() {
        if n % 3 != 0 {
            in_order.record(path, None);
        }
    }
    let after_removal = received + live(&region);
    let (_rebuilt, rebuilt) = built_at_once(&all, |n| n % 3 == 0);
    eprintln!("after removals: {after_removal} bytes; the rows kept, built at once: {rebuilt}");
    for (n, path) in all.iter().enumerate() {
        assert_eq!(in_order.get(path).is_some(), n % 3 == 0, "{path}");
    }
    assert!(
        (after_removal as f64) < rebuilt as f64 * 1.1,
        "after removals, {after_removal} bytes; the rows kept, built at once, {rebuilt}"
    );
}
