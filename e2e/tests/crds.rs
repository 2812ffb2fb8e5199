//! The generated CRDs on a real API server: they install (so their schemas are structural),
//! every example is accepted by `kubectl apply --dry-run=server`, and every invalid example is
//! refused with the message its first line names (`# expect:` by CEL, where the server has it;
//! `# expect-structural:` by the schema alone, on any server).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::{Path, PathBuf};

use kubeprof_e2e::{TestEnv, say};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn crds_install_and_examples_apply_on_a_real_server() -> anyhow::Result<()> {
    let Some(env) = TestEnv::get("crds::crds_install_and_examples_apply_on_a_real_server") else {
        return Ok(());
    };
    let names = env.install_crds(&repo().join("crds/yaml")).await?;
    assert_eq!(
        names,
        [
            "profilingpolicies.kubeprof.io",
            "profilingtargets.kubeprof.io"
        ]
    );
    let ns = env.namespace("examples").await?;

    // The printer columns and short name reach kubectl.
    let (ok, _, stderr) = env.kubectl(&["get", "pt", "-n", &ns.name])?;
    assert!(ok, "kubectl get pt: {stderr}");

    let examples = yaml_files(&repo().join("examples"));
    assert!(examples.len() >= 3);
    for file in &examples {
        let path = file.to_string_lossy();
        let (ok, stdout, stderr) =
            env.kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &path])?;
        assert!(ok, "{path} refused by the server: {stderr}");
        say(&format!("e2e: accepted {}", stdout.trim()));
    }

    let mut cel_checked = 0;
    for file in yaml_files(&repo().join("examples/invalid")) {
        let path = file.to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file)?;
        let first = text.lines().next().unwrap_or_default();
        let (expected, structural) = if let Some(m) = first.strip_prefix("# expect-structural: ") {
            (m, true)
        } else if let Some(m) = first.strip_prefix("# expect: ") {
            (m, false)
        } else {
            panic!("{path} lacks an `# expect:` first line");
        };
        // --validate=false: the server, not kubectl, must refuse.
        let (ok, _, stderr) = env.kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=false",
            "-n",
            &ns.name,
            "-f",
            &path,
        ])?;
        if structural || env.supports_cel() {
            assert!(!ok, "{path} was accepted by the server");
            assert!(
                stderr.contains(expected),
                "{path}: refused with {stderr:?}, expected {expected:?}"
            );
            cel_checked += usize::from(!structural);
        } else {
            let (_, _, git) = env.server_version();
            say(&format!(
                "e2e: skipped server-side CEL check for {}: server {git} has no CEL (needs >= 1.25); checked client-side in crds/tests/examples.rs",
                file.file_name().unwrap_or_default().to_string_lossy()
            ));
            assert!(
                ok,
                "{path}: without CEL the schema alone must accept it, got {stderr}"
            );
        }
    }
    say(&format!("e2e: {cel_checked} CEL rules checked server-side"));
    ns.cleanup().await?;
    Ok(())
}
