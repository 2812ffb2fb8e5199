//! `kubeprof-scraper flamegraph` as a user runs it on stored profiles: one, several merged,
//! a difference from `--base`, and an empty CPU profile (an idle process's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use kubeprof_pprof::{self as pprof, DecodeLimits};

const BIN: &str = env!("CARGO_BIN_EXE_kubeprof-scraper");

fn write(dir: &std::path::Path, name: &str, body: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// The CPU fixture with every sample scaled by `factor` (0: an empty profile).
fn scaled_cpu(factor: i64) -> Vec<u8> {
    let mut p = pprof::decode(&common::fixture("cpu.pb.gz"), &DecodeLimits::default()).unwrap();
    if factor == 0 {
        p.sample.clear();
    }
    for s in &mut p.sample {
        for v in &mut s.value {
            *v *= factor;
        }
    }
    pprof::encode_gzip(&p)
}

fn total_of(svg: &str, frame: &str) -> u64 {
    // inferno's title: `<title>main.hotCPULeaf (1,230,000,000 nanoseconds, 42.00%)</title>`
    let at = svg
        .find(&format!("<title>{frame} ("))
        .unwrap_or_else(|| panic!("no {frame}"));
    let rest = &svg[at + "<title>".len() + frame.len() + " (".len()..];
    rest.split(' ')
        .next()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap()
}

#[test]
fn several_profiles_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let one = write(dir.path(), "1.pb.gz", &common::fixture("cpu.pb.gz"));
    let two = write(dir.path(), "2.pb.gz", &common::fixture("cpu.pb.gz"));
    let out = Command::new(BIN)
        .args(["flamegraph", "-o"])
        .arg(dir.path().join("one.svg"))
        .arg(&one)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["flamegraph", "-o"])
        .arg(dir.path().join("both.svg"))
        .arg(&one)
        .arg(&two)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let one = std::fs::read_to_string(dir.path().join("one.svg")).unwrap();
    let both = std::fs::read_to_string(dir.path().join("both.svg")).unwrap();
    assert_eq!(
        total_of(&both, "main.hotCPULeaf"),
        2 * total_of(&one, "main.hotCPULeaf")
    );
}

#[test]
fn base_profiles_give_a_differential_flame_graph() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), "base.pb.gz", &common::fixture("cpu.pb.gz"));
    let new = write(dir.path(), "new.pb.gz", &scaled_cpu(3));
    let svg = dir.path().join("diff.svg");
    let out = Command::new(BIN)
        .arg("flamegraph")
        .arg(&new)
        .arg("-o")
        .arg(&svg)
        .arg("--no-normalize")
        .arg("--base")
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("difference"), "not a differential graph");
    // Three times the base: every frame grew (inferno gives the change as a share of the new
    // total), drawn red.
    let at = svg.find("<title>main.hotCPULeaf (").unwrap();
    let frame = svg[at..].split("</g>").next().unwrap();
    assert!(frame.contains("%; +"), "{frame}");
    assert!(frame.contains("fill=\"rgb(255,"), "{frame}");
}

#[test]
fn an_empty_profile_renders_an_svg_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "1795593821668.pb.gz", &scaled_cpu(0));
    let out = Command::new(BIN)
        .arg("flamegraph")
        .arg(&empty)
        .args(["-o", "cpu.svg"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no samples of type cpu (nanoseconds)"),
        "{stderr}"
    );
    let svg = std::fs::read_to_string(dir.path().join("cpu.svg")).unwrap();
    assert!(svg.contains("empty"), "{svg}");
}
