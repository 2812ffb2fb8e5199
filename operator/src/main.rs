fn main() -> std::process::ExitCode {
    kubeprof_operator::cli::main()
}
