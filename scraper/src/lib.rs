//! kubeprof-scraper: jobs -> scheduler -> fetch -> decode/validate -> delta -> labels -> sinks.
#![forbid(unsafe_code)]

pub mod pprof;
pub mod proto;
