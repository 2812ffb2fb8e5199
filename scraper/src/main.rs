fn main() -> std::process::ExitCode {
    kubeprof_scraper::main()
}
