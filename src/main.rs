//! The `charging-ra` binary: see `charging-ra --help`.
// One exception, below: calls into the allocator's C API, which has no safe binding.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod cli;

/// mimalloc instead of glibc's malloc: under load the engine allocates and frees many small buffers (messages,
/// snapshots) across threads, where glibc's allocator took about a fifth of the CPU (BENCHMARKS.md, "Replication").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The OCS simulator keeps the memory it frees for its own reuse instead of returning it to the system
/// (mimalloc's `purge_delay` of -1; called once at its start, before any other thread runs). Returning it cost the
/// simulator twice in the benchmarks (BENCHMARKS.md, eighth and ninth measurements): the ledger dropped by
/// `POST /v1/reset` was given back some milliseconds later, in one stall of 38–62 ms during the next run, and the
/// next run then took a page fault for every page it filled again (16% of the simulator's CPU in a paced run). Its
/// memory is now what its largest ledger needed. Not for the engine's processes, whose memory per session is a
/// measured target.
#[cfg(feature = "mimalloc")]
fn keep_freed_memory() {
    use libmimalloc_sys::{mi_option_get, mi_option_set};
    // SAFETY: the options are process-wide and not synchronized; this runs before the simulator starts a thread.
    #[allow(unsafe_code)]
    unsafe {
        match mi_option_get(MI_OPTION_PURGE_DELAY) {
            PURGE_DELAY_DEFAULT => mi_option_set(MI_OPTION_PURGE_DELAY, -1),
            other => tracing::warn!(other, "mimalloc's purge_delay not where expected: freed memory is returned"),
        }
    }
}
#[cfg(not(feature = "mimalloc"))]
fn keep_freed_memory() {}

/// `mi_option_purge_delay` in the mimalloc (v3) that libmimalloc-sys builds, which does not name it: the option before
/// `mi_option_use_numa_nodes`, which it does. Its default is 1000 (ms); [`keep_freed_memory`] leaves an option
/// found with another value alone, in case the numbering has moved.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;
#[cfg(feature = "mimalloc")]
const PURGE_DELAY_DEFAULT: std::ffi::c_long = 1000;

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    #[test]
    fn the_purge_delay_option_is_where_keep_freed_memory_expects_it() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment has set it: its default is not to be seen
        }
        // SAFETY: reading an option; no test of this binary sets one.
        #[allow(unsafe_code)]
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            delay,
            super::PURGE_DELAY_DEFAULT,
            "mimalloc's purge_delay is not option {}",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}

fn main() -> std::process::ExitCode {
    cli::main()
}
