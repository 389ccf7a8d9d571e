//! The `sbctl` binary: everything is in the library.

fn main() -> std::process::ExitCode {
    sbctl::main()
}
