//! The `callkeeper` binary: everything lives in the library.
fn main() -> std::process::ExitCode {
    callkeeper::cli::main()
}
