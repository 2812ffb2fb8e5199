#[global_allocator]
static ALLOCATOR: kubeprof_operator::Jemalloc = kubeprof_operator::Jemalloc;

fn main() -> std::process::ExitCode {
    kubeprof_operator::main()
}
