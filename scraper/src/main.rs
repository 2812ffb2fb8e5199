fn main() {
    println!("kubeprof-scraper {}", env!("CARGO_PKG_VERSION"));
}
