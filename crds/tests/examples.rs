//! The examples against the committed CRDs, client-side: every valid example deserializes into
//! the Rust types, fits the schema's bounds and passes the CRDs' CEL rules; every invalid example
//! is refused with the message its first line announces (`# expect:` by a CEL rule,
//! `# expect-structural:` by the schema: its bounds, checked here as the operator checks them,
//! or what the Rust types mirror of it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use kubeprof_crds::{ProfilingPolicy, ProfilingTarget, validation::bound_violations};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::with::singleton_map_recursive::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The openAPIV3Schema of the committed CRD for `kind`.
fn schema_for(kind: &str) -> Option<Value> {
    for path in yaml_files(&root().join("crds/yaml")) {
        for crd in documents(&path) {
            if crd["spec"]["names"]["kind"] == kind {
                return Some(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone());
            }
        }
    }
    None
}

/// `Ok` if the object passes the Rust types, the bounds and the CEL rules, else the refusal
/// messages.
fn check(obj: &Value) -> Result<(), String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let typed = match kind {
        "ProfilingTarget" => serde_json::from_value::<ProfilingTarget>(obj.clone()).map(|_| ()),
        "ProfilingPolicy" => serde_json::from_value::<ProfilingPolicy>(obj.clone()).map(|_| ()),
        _ => return Ok(()),
    };
    typed.map_err(|e| format!("schema: {e}"))?;
    let schema = schema_for(kind).unwrap_or_else(|| panic!("no committed CRD for {kind}"));
    let bounds = bound_violations(&schema, obj, "");
    if !bounds.is_empty() {
        return Err(bounds.join("; "));
    }
    Validator::new()
        .validate(&schema, obj, None)
        .map_err(|errs| errs.to_string())
}

#[test]
fn valid_examples_pass_types_and_cel() {
    let files = yaml_files(&root().join("examples"));
    assert!(files.len() >= 3, "examples/ has {} files", files.len());
    let mut custom_resources = 0;
    for path in files {
        for obj in documents(&path) {
            if obj["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .starts_with("kubeprof.io/")
            {
                custom_resources += 1;
            }
            if let Err(e) = check(&obj) {
                panic!("{} is refused: {e}", path.display());
            }
        }
    }
    assert!(custom_resources >= 2);
}

#[test]
fn invalid_examples_are_refused_with_their_message() {
    let files = yaml_files(&root().join("examples/invalid"));
    assert!(files.len() >= 6);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let expected = first
            .strip_prefix("# expect: ")
            .or_else(|| first.strip_prefix("# expect-structural: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect:` first line", path.display()));
        let structural = first.starts_with("# expect-structural: ");
        for obj in documents(&path) {
            match check(&obj) {
                Ok(()) => panic!("{} was accepted", path.display()),
                Err(e) if structural => {
                    // A bound is checked here with the server's words; for the rest of the
                    // schema serde's message differs from the server's (checked in e2e), and it
                    // suffices that the typed parse refused it.
                    assert!(
                        e.starts_with("schema: ") || e.contains(expected),
                        "{}: {e}",
                        path.display()
                    );
                }
                Err(e) => assert!(
                    e.contains(expected),
                    "{}: refused, but with {e:?} instead of {expected:?}",
                    path.display()
                ),
            }
        }
    }
}
