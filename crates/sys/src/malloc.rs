//! The C allocator's retention policy (glibc malloc): what a long-running
//! daemon gives back to the kernel after a burst of work.
//!
//! glibc gives each thread that allocates under contention its own arena
//! (up to 8 per core); a tokio runtime with its blocking pool touches many
//! threads, and every arena keeps its freed pages. It also raises its mmap
//! threshold each time an mmapped block is freed (up to 32 MiB), after which
//! 1 MiB transfer buffers come from arenas instead of `mmap` and stay behind
//! as fragmentation once the transfer is over. [`tune`] fixes both at start;
//! [`trim`] returns the free pages of every arena after a burst of work.
//! Other C libraries: both are no-ops.

/// Most arenas malloc may create: two keep contention low on the daemon's
/// few busy threads while bounding what idle arenas can hold.
pub const ARENA_MAX: i32 = 2;
/// Allocations from this size on are `mmap`ed and unmapped on free (fixed:
/// setting it turns glibc's dynamic threshold off). Transfer buffers (1 MiB)
/// and h2 receive buffers are above it; the small objects of requests below.
pub const MMAP_THRESHOLD: i32 = 256 << 10;
/// Free memory at the top of the main heap above this size is returned at
/// once (fixed, like the mmap threshold).
pub const TRIM_THRESHOLD: i32 = 1 << 20;

/// Set the allocator's limits. Call first thing in `main`, before threads
/// start. An operator's own settings win: with `GLIBC_TUNABLES` or any
/// `MALLOC_*` variable in the environment nothing is changed.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    {
        let operator_set = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || k.starts_with("MALLOC_")
        });
        if operator_set {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called
        // before other threads exist, and invalid values are refused (return 0).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Return the free pages of every malloc arena to the kernel. It walks the
/// heaps (milliseconds with large heaps): call from a blocking thread, after
/// bursts of work, not per request.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock) and
    // touches only free chunks.
    unsafe {
        libc::malloc_trim(0);
    }
}
