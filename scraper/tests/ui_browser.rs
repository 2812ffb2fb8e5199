//! The pages in a real browser: headless Chromium, driven over the DevTools protocol, against
//! the `kubeprof-scraper` binary scraping a healthy fake Go service and a closed port.
//! Screenshots are kept in `target/ui-artifacts/`. Without Chromium (`apt-get install
//! chromium`) the test prints one SKIPPED line and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "browser/cdp.rs"]
mod cdp;
mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kubeprof-scraper");

/// The scraper under test, killed on drop.
struct Scraper(Child);

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("ui-artifacts")
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn targets_json(addr: SocketAddr) -> Option<Value> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /targets HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()
}

fn cpu_profiles(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("demo/process_cpu"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pb.gz"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits (up to 60 s) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn targets_and_flame_graphs_in_a_real_browser() {
    let Some(chromium) = cdp::find_chromium() else {
        println!(
            "SKIPPED ui browser test: no chromium on the PATH (apt-get install chromium, or set KUBEPROF_CHROMIUM)"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let target = runtime.block_on(common::FakeTarget::start());
    let closed = free_port();
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    let only = |kind: &str| {
        ["cpu", "memory", "goroutine", "mutex", "block"]
            .iter()
            .map(|k| format!("{k}: {{enabled: {}}}", *k == kind))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.path().join("scraper.yaml");
    std::fs::write(
        &config,
        format!(
            "targets:\n  - name: demo\n    addresses: [\"{}\"]\n    interval: 2s\n    scrapeTimeout: 1s\n    profiles: {{{}}}\n  - name: broken\n    addresses: [\"{closed}\"]\n    interval: 2s\n    scrapeTimeout: 1s\n    profiles: {{{}}}\nsinks:\n  - name: local\n    file: {{directory: {}}}\n",
            target.addr,
            only("cpu").replace("cpu: {enabled: true}", "cpu: {enabled: true, seconds: 1}"),
            only("goroutine"),
            profiles.display()
        ),
    )
    .unwrap();
    let _scraper = Scraper(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--listen")
            .arg(listen.to_string())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("one job up, one failing, two CPU profiles stored", || {
        let up_and_failing = targets_json(listen)
            .is_some_and(|j| j["summary"]["up"] == 1 && j["summary"]["failing"] == 1);
        up_and_failing && cpu_profiles(&profiles) >= 2
    });

    eprintln!("ui_browser: scraper ready");
    let browser = cdp::Browser::launch(&chromium);
    eprintln!("ui_browser: browser launched");
    let mut page = browser.page();
    let base = format!("http://{listen}");
    let out = artifacts();

    eprintln!("ui_browser: devtools page connected");
    // /targets: both rows, each with its state.
    page.goto(&format!("{base}/targets"));
    let rows = page.eval(
        "[...document.querySelectorAll('tr.target')].map(r => ({class: r.className, text: r.innerText}))",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |state: &str| {
        rows.iter()
            .find(|r| {
                r["class"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("state-{state}"))
            })
            .unwrap_or_else(|| panic!("no {state} row in {rows:?}"))["text"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let failing = row("failing");
    assert!(failing.contains(&closed.to_string()), "{failing}");
    assert!(failing.contains("connect"), "{failing}");
    let up = row("up");
    assert!(up.contains(&target.addr.to_string()), "{up}");
    assert!(up.contains("service_name=demo"), "{up}");
    page.screenshot(&out.join("targets.png"));

    eprintln!("ui_browser: targets checked");
    // /ui -> the newest CPU flame graph; its hot function is a frame of the SVG.
    page.goto(&format!("{base}/ui"));
    page.screenshot(&out.join("profiles.png"));
    let href = page
        .eval("document.querySelector('a[href*=\"/ui/flame\"][href*=\"type=process_cpu\"]').href");
    page.goto(href.as_str().unwrap());
    let frames = "(() => { const d = document.querySelector('object.flame').contentDocument; return d ? [...d.querySelectorAll('g > title')].map(t => t.textContent) : []; })()";
    page.wait_for(
        "the flame graph's frames",
        &format!("{frames}.some(t => t.startsWith('main.hotCPULeaf '))"),
    );
    let hot: Vec<String> = serde_json::from_value::<Vec<String>>(page.eval(frames))
        .unwrap()
        .into_iter()
        .filter(|t| t.starts_with("main.hotCPULeaf "))
        .collect();
    assert!(hot[0].contains("nanoseconds"), "{hot:?}");
    let top = page.eval("document.querySelector('table.top tr.function td:last-child').innerText");
    assert_eq!(top, "main.hotCPULeaf", "the top function by self time");
    page.screenshot(&out.join("flame.png"));

    eprintln!("ui_browser: flame graph checked");
    // Searching highlights the frame inside the SVG.
    page.goto(&format!("{}&s=hotCPULeaf", href.as_str().unwrap()));
    page.wait_for(
        "the search to match",
        "(() => { const d = document.querySelector('object.flame').contentDocument; const m = d && d.getElementById('matched'); return m && m.textContent.includes('Matched'); })()",
    );

    eprintln!("ui_browser: search checked");
    // The difference of the two oldest profiles against the newest ones.
    page.goto(&format!(
        "{base}/ui/profiles?sink=local&service=demo&type=process_cpu"
    ));
    page.screenshot(&out.join("timeline.png"));
    page.eval("document.querySelector('form.diff').submit()");
    page.wait_for(
        "the diff page",
        "location.pathname === '/ui/diff' && document.readyState === 'complete'",
    );
    page.wait_for(
        "the differential flame graph",
        "(() => { const d = document.querySelector('object.flame').contentDocument; return d && d.querySelectorAll('g > title').length > 1; })()",
    );
    page.screenshot(&out.join("diff.png"));
    println!("screenshots in {}", out.display());
}
