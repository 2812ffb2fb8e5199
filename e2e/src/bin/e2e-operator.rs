//! The operator binary, built inside this crate so that e2e tests can start it as a real process
//! (`CARGO_BIN_EXE_e2e-operator`); identical to `kubeprof-operator`.
#[global_allocator]
static ALLOCATOR: kubeprof_operator::Jemalloc = kubeprof_operator::Jemalloc;

fn main() -> std::process::ExitCode {
    kubeprof_operator::main()
}
