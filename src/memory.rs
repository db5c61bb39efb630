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
/// after a large piece of work, whose answer and logs still hold some of it now, or work
/// that ran code the daemon does not run while idle (a connection's end). Calls close
/// together give back once. Outside a runtime, at once.
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

/// Returns the allocator's free pages and this program's idle code pages to the system
/// (see [`release_code`]). It walks the heap once (about a millisecond for tens of MiB):
/// call it after a large piece of work, not per request.
pub fn give_back() {
    trim_heap();
    let _ = release_code();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim takes no pointer, touches only the allocator's own state, and
    // glibc serialises it with every other allocator call.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's) return freed memory themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Lets go of the pages of this program's code and read-only data mapped so far: the
/// kernel maps a program's file 64 KiB or more around each page first read and never
/// unmaps it, so a daemon whose start-up (reading its configuration and keys, scanning
/// and hashing its tree, comparing with its peers) ran through most of its code keeps
/// all of it resident while idle: at 10,000 files, 5.8 of its 13.3 MiB. The pages stay in
/// the page cache, shared with every other process running this program; what runs
/// afterwards is mapped again from there as it runs (a minor fault each), so only what
/// the daemon uses counts as its memory.
///
/// Only the program's own read-only mappings are touched, and in them only pages still
/// the file's own: a page relocated at start-up, or one a debugger or a uprobe wrote a
/// breakpoint into, is this process's private copy, and is kept. Returns how many bytes
/// were let go.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn release_code() -> std::io::Result<usize> {
    let page = rustix::param::page_size();
    let mut released = 0;
    for (mapping, entries) in program_pages()? {
        let files_own = |i: usize| entries[i] & MAPPED != 0 && entries[i] & FILES_OWN != 0;
        let mut i = 0;
        while i < entries.len() {
            let run = (i..entries.len()).take_while(|&j| files_own(j)).count();
            if run == 0 {
                i += 1;
                continue;
            }
            // SAFETY: the range lies within a read-only private mapping of this program's
            // file, which nothing in the process writes to or makes writable; the pages
            // let go are the file's own, unchanged, so the kernel maps the same bytes
            // again from the file when they are next read. No memory Rust owns changes.
            let done = unsafe {
                libc::madvise(
                    (mapping.start + i * page) as *mut libc::c_void,
                    run * page,
                    libc::MADV_DONTNEED,
                )
            };
            if done == 0 {
                released += run * page;
            }
            i += run;
        }
    }
    Ok(released)
}

/// In an entry of `/proc/self/pagemap`: the page is mapped.
#[cfg(target_os = "linux")]
const MAPPED: u64 = 1 << 63;
/// In an entry of `/proc/self/pagemap`: the page is the file's own (or shared), not a
/// private copy.
#[cfg(target_os = "linux")]
const FILES_OWN: u64 = 1 << 61;

/// This program's read-only private mappings, each with the pagemap entry of each of its
/// pages.
#[cfg(target_os = "linux")]
fn program_pages() -> std::io::Result<Vec<(Mapping, Vec<u64>)>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mappings: Vec<Mapping> = maps.lines().filter_map(Mapping::parse).collect();
    let here = release_code as fn() -> std::io::Result<usize> as usize;
    let Some(program) = mappings
        .iter()
        .find(|m| (m.start..m.end).contains(&here))
        .map(|m| m.file)
    else {
        return Ok(Vec::new());
    };
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    mappings
        .into_iter()
        .filter(|m| m.file == program && m.read_only_private)
        .map(|m| {
            let entries = pagemap_entries(&pagemap, m.start, m.end)?;
            Ok((m, entries))
        })
        .collect()
}

/// The pagemap entries of the pages from `start` to `end`.
#[cfg(target_os = "linux")]
fn pagemap_entries(pagemap: &std::fs::File, start: usize, end: usize) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;

    let page = rustix::param::page_size();
    let mut bytes = vec![0u8; (end - start) / page * 8];
    pagemap.read_exact_at(&mut bytes, (start / page * 8) as u64)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|b| u64::from_ne_bytes(b.try_into().expect("eight bytes")))
        .collect())
}

/// One line of `/proc/self/maps`: an address range, whether it is mapped read-only and
/// private, and the file it maps (device and inode).
#[cfg(target_os = "linux")]
struct Mapping {
    start: usize,
    end: usize,
    read_only_private: bool,
    file: (u64, u64),
}

#[cfg(target_os = "linux")]
impl Mapping {
    fn parse(line: &str) -> Option<Mapping> {
        let mut fields = line.split_ascii_whitespace();
        let (range, perms, _offset, device, inode) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let (start, end) = range.split_once('-')?;
        let (major, minor) = device.split_once(':')?;
        let device =
            u64::from_str_radix(major, 16).ok()? << 32 | u64::from_str_radix(minor, 16).ok()?;
        Some(Mapping {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            read_only_private: matches!(perms, "r--p" | "r-xp"),
            file: (
                device,
                inode.parse().ok().filter(|&inode: &u64| inode != 0)?,
            ),
        })
    }
}

/// Elsewhere, code is left as the system maps it.
#[cfg(not(target_os = "linux"))]
pub fn release_code() -> std::io::Result<usize> {
    Ok(0)
}

/// Sets glibc's allocator up for a process that holds a large map for long and needs
/// large buffers for a while: one arena, unless `MALLOC_ARENA_MAX` says otherwise, and
/// large blocks mapped apart, unless `MALLOC_MMAP_THRESHOLD_` says otherwise. Call it
/// first thing, before any thread is started.
///
/// glibc gives each thread that allocates while another holds an arena one of its own,
/// up to eight per core, and each keeps what it freed. The runtime's threads and the
/// blocking ones that receive and write batches take turns, so a daemon that had
/// received 10,000 files held 31 MiB for a heap of 3; with one arena, 16. gosyncd's
/// threads seldom allocate at the same moment: the lock they share costs nothing
/// measurable (the initial sync of 10,000 and 100,000 files took as long).
///
/// glibc maps a block of [`MMAP_THRESHOLD_BYTES`] or more apart from its heap, and gives
/// it back when it is freed, but once a large block is freed it raises that bar to the
/// block's size: after a scan's list of 100,000 paths (8.8 MB), every buffer of a push
/// (a batch's answer, its parsed results, 300 KB each) came from the heap, among what the
/// process keeps, and each left a hole the next did not always fit. The `sync` command's
/// resident memory grew by 3 MiB while it pushed 100,000 files (26.5 MiB of heap
/// resident instead of 23.5). The bar is fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn set_up_allocator() {
    // SAFETY: mallopt takes two integers and changes only the allocator's own settings;
    // it is called before any other thread exists.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int);
        }
    }
}

/// Blocks of this size or more are mapped apart from the heap (see [`set_up_allocator`]):
/// glibc's own first setting.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Other allocators have no such arenas, nor such a bar.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn set_up_allocator() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Read-only data of this program that nothing but the test below reads: 1 MiB of it,
    /// so that the middle half lies far from any other data read meanwhile.
    static COLD: [u8; 1 << 20] = [0x5a; 1 << 20];

    /// How many pages of the middle half of [`COLD`] are mapped.
    fn cold_pages_mapped() -> usize {
        let page = rustix::param::page_size();
        let start = (COLD.as_ptr() as usize + COLD.len() / 4).next_multiple_of(page);
        let end = (COLD.as_ptr() as usize + COLD.len() * 3 / 4) / page * page;
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let entries = pagemap_entries(&pagemap, start, end).unwrap();
        assert!(entries.len() >= 64);
        entries.iter().filter(|&&e| e & MAPPED != 0).count()
    }

    fn read_cold() -> u64 {
        std::hint::black_box(&COLD)
            .iter()
            .map(|&b| u64::from(b))
            .sum()
    }

    /// Pages of this program's read-only mappings that are private copies.
    fn private_copies() -> usize {
        program_pages()
            .unwrap()
            .iter()
            .flat_map(|(_, entries)| entries)
            .filter(|&&e| e & MAPPED != 0 && e & FILES_OWN == 0)
            .count()
    }

    #[test]
    fn read_only_pages_not_in_use_are_let_go_and_private_copies_are_kept() {
        let expected = 0x5a * (1 << 20);
        assert_eq!(read_cold(), expected);
        assert!(cold_pages_mapped() >= 64, "reading it maps it");
        // A position-independent program's pointers are relocated at start-up, each page
        // of them a private copy of the file's.
        let copies = private_copies();
        assert!(
            copies > 0,
            "no private copy among this program's read-only pages"
        );

        let released = release_code().unwrap();
        assert!(
            released >= 128 * rustix::param::page_size(),
            "{released} bytes let go"
        );
        assert_eq!(cold_pages_mapped(), 0);
        assert_eq!(private_copies(), copies, "a private copy was let go");

        // Read again, the data is mapped again from the file, the same.
        assert_eq!(read_cold(), expected);
        assert!(cold_pages_mapped() >= 64);
    }

    #[test]
    fn a_line_of_the_maps_is_read_with_its_file() {
        let line = "5652e4dfa000-5652e53d4000 r-xp 00223000 fe:01 10010636    /usr/bin/gosyncd";
        let m = Mapping::parse(line).unwrap();
        assert_eq!((m.start, m.end), (0x5652e4dfa000, 0x5652e53d4000));
        assert!(m.read_only_private);
        assert_eq!(m.file, (0xfe << 32 | 1, 10010636));
        let data = "5652e53d4000-5652e53d5000 rw-p 00223000 fe:01 10010636    /usr/bin/gosyncd";
        assert!(!Mapping::parse(data).unwrap().read_only_private);
        // Anonymous memory maps no file, and is never taken for the program's.
        assert!(Mapping::parse("7ffd1000-7ffd2000 r--p 00000000 00:00 0    [vvar]").is_none());
        assert!(Mapping::parse("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").is_none());
    }
}
