//! The `callkeeper` binary: everything lives in the library.

/// jemalloc instead of glibc's allocator: glibc's `malloc` and `free` took about a fifth of the
/// worker's CPU while it fires (BENCHMARKS.md), and jemalloc brought the 10,000-callback burst
/// out sooner in alternated runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    callkeeper::cli::main()
}
