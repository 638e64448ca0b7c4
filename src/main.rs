//! The `callkeeper` binary: everything lives in the library.

/// glibc's allocator was about a sixth of the worker's samples in a storm (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    callkeeper::cli::main()
}
