//! The `charging-ra` binary: see `charging-ra --help`.
// One exception, below: a call into the allocator's C API, which has no safe binding.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod cli;

/// mimalloc instead of glibc's malloc: under load the engine allocates and frees many small buffers (messages,
/// snapshots) across threads, where glibc's allocator took about a fifth of the CPU (BENCHMARKS.md, "Replication").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory the allocator keeps freed to the system now, not at some later allocation: the OCS simulator
/// calls it after emptying its ledger (`OcsServerConfig::after_reset`).
#[cfg(feature = "mimalloc")]
const RETURN_FREED_MEMORY: Option<fn()> = Some(|| {
    // SAFETY: mi_collect has no preconditions; any thread may call it at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
});
#[cfg(not(feature = "mimalloc"))]
const RETURN_FREED_MEMORY: Option<fn()> = None;

fn main() -> std::process::ExitCode {
    cli::main()
}
