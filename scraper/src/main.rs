/// jemalloc, as in the operator: glibc kept what hostile targets made the scraper allocate (bodies,
/// decompressed bombs, per-connection buffers) spread over its arenas as RSS long after it was
/// freed; jemalloc returns it and fragments less.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    kubeprof_scraper::main()
}
