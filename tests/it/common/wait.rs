//! Waiting: the tests' timeouts, and polling for a condition with a deadline that fails
//! the test, or for as long as a condition must keep holding.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// Longest a run of the binary may take before the test fails and the child is killed.
pub const BINARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an engine run or a single request may take in a test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a change may take to reach a live peer.
pub const WAIT: Duration = Duration::from_secs(10);
/// Longest a change may take to reach a live peer while another peer is down: a dead
/// peer must not hold the others back.
pub const PROMPT: Duration = Duration::from_secs(3);
/// How often a polled condition is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(15);

/// What a polled check returns: `true`, `Some` or `Ok` once the state waited for is
/// there (with what it yields), and otherwise, for an `Err`, what was seen instead, which
/// the failure message shows.
pub trait Ready {
    type Value;
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Ready for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Polls `check` until it is ready and returns what it yields, failing the test, with
/// `what` and the last state seen, when it is still not ready after `timeout`.
pub async fn eventually<R: Ready>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> R,
) -> R::Value {
    eventually_showing(what, timeout, check, String::new).await
}

/// Like [`eventually`], with `state` saying on failure what there is instead: it is
/// called then only, so it may be costly (walking a tree, reading logs).
pub async fn eventually_showing<R: Ready>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> R,
    state: impl FnOnce() -> String,
) -> R::Value {
    let started = Instant::now();
    loop {
        match check().ready() {
            Ok(value) => return value,
            Err(seen) if started.elapsed() >= timeout => give_up(what, timeout, seen, state()),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Like [`eventually`], for a check that has to await something (a request, say).
pub async fn eventually_async<R: Ready, F: Future<Output = R>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> R::Value {
    let started = Instant::now();
    loop {
        match check().await.ready() {
            Ok(value) => return value,
            Err(seen) if started.elapsed() >= timeout => {
                give_up(what, timeout, seen, String::new())
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Fails the test with what was seen at the last poll and the state described, if any.
fn give_up(what: &str, timeout: Duration, seen: Option<String>, state: String) -> ! {
    let mut message = format!("{what}: still not the case after {timeout:?}");
    for part in seen.into_iter().chain(Some(state)) {
        if !part.is_empty() {
            message = format!("{message}\n{part}");
        }
    }
    panic!("{message}")
}

/// Checks `check` all through `period`, failing the test, with what was seen instead, as
/// soon as it is not ready.
pub async fn holds_for<R: Ready>(what: &str, period: Duration, mut check: impl FnMut() -> R) {
    let started = Instant::now();
    loop {
        if let Err(seen) = check().ready() {
            let seen = seen.map_or_else(String::new, |seen| format!("\n{seen}"));
            panic!(
                "{what}: no longer the case {:?} into the quiet period{seen}",
                started.elapsed()
            );
        }
        if started.elapsed() >= period {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
