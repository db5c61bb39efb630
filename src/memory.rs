//! Giving freed memory back to the system.
//!
//! glibc's allocator returns freed memory to the system only from the top of its heap,
//! and it raises that bar after each large block freed. A daemon's start-up scan, a
//! comparison with its peers and a large batch received all need transient buffers
//! allocated among what the daemon keeps; without this, a daemon stays at the
//! high-water mark of its busiest moment while it is idle (at 100,000 paths, 38 MiB
//! instead of 27).

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
