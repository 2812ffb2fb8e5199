//! The scraper binary, built inside this crate so that e2e tests can start it as a real process
//! (`CARGO_BIN_EXE_e2e-scraper`); identical to `kubeprof-scraper`.
fn main() -> std::process::ExitCode {
    kubeprof_scraper::main()
}
