//! Giving freed memory back to the system, and keeping the allocator to one arena.
//!
//! glibc's allocator returns freed memory to the system only from the top of its heap,
//! and it raises that bar after each large block freed. A daemon's start-up scan, a
//! comparison with its peers and a large batch received all need transient buffers
//! allocated among what the daemon keeps; without this, a daemon stays at the
//! high-water mark of its busiest moment while it is idle (at 100,000 paths, 38 MiB
//! instead of 26).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A batch received or a watcher's burst of this many paths or more gives back the
/// memory it needed once it is done ([`give_back_soon`]); smaller ones need too little
/// to matter. (Start-up and each comparison pass with the peers, minutes apart, always
/// do.)
pub const LARGE_WORK: usize = 1000;

/// How long after the last piece of work noted by [`give_back_soon`] the memory is given
/// back: once the answers and logs that follow a batch are done with theirs too.
const QUIET: Duration = Duration::from_secs(2);

/// When the last piece of work was noted, in milliseconds since [`start`].
static LAST_WORK_MS: AtomicU64 = AtomicU64::new(0);
/// Whether a task waits to give memory back.
static SCHEDULED: AtomicBool = AtomicBool::new(false);

fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    start().elapsed().as_millis() as u64
}

/// Gives memory back once the process has been [`QUIET`] for a while after this call:
/// after a large piece of work, whose answer and logs still hold some of it now. Outside
/// a runtime, at once.
pub fn give_back_soon() {
    LAST_WORK_MS.store(now_ms(), Ordering::SeqCst);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        give_back();
        return;
    };
    if SCHEDULED.swap(true, Ordering::SeqCst) {
        return;
    }
    runtime.spawn(async {
        loop {
            let due = LAST_WORK_MS.load(Ordering::SeqCst) + QUIET.as_millis() as u64;
            let now = now_ms();
            if now >= due {
                break;
            }
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
        SCHEDULED.store(false, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(give_back).await;
    });
}

/// Returns the allocator's free pages to the system. It walks the heap once (about a
/// millisecond for tens of MiB): call it after a large piece of work, not per request.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn give_back() {
    // SAFETY: malloc_trim takes no pointer, touches only the allocator's own state, and
    // glibc serialises it with every other allocator call.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's) return freed memory themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back() {}

/// Keeps glibc's allocator to one arena, unless `MALLOC_ARENA_MAX` says otherwise.
/// Call it first thing, before any thread is started.
///
/// glibc gives each thread that allocates while another holds an arena one of its own,
/// up to eight per core, and each keeps what it freed. The runtime's threads and the
/// blocking ones that receive and write batches take turns, so a daemon that had
/// received 10,000 files held 31 MiB for a heap of 3; with one arena, 16. gosyncd's
/// threads seldom allocate at the same moment: the lock they share costs nothing
/// measurable (the initial sync of 10,000 and 100,000 files took as long).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt takes two integers and changes only the allocator's own settings;
    // it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators have no such arenas.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena() {}
