//! The `charging-ra` binary: see `charging-ra --help`.
#![forbid(unsafe_code)]

mod cli;

/// mimalloc instead of glibc's malloc: under load the engine allocates and frees many small buffers (messages,
/// snapshots) across threads, where glibc's allocator took about a fifth of the CPU (BENCHMARKS.md, "Replication").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
