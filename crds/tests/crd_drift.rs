//! The committed CRD YAML must be what the Rust types generate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = kubeprof_crds::generated_crd_files().expect("CRDs render");
    assert_eq!(files.len(), 2);
    // The Helm chart ships its own copy (Helm installs charts/<name>/crds/ before templates).
    for dir in [root.join("yaml"), root.join("../charts/kubeprof/crds")] {
        for (name, yaml) in &files {
            let path = dir.join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == *yaml,
                "{} differs from the Rust types: run `{}` and commit crds/yaml/ and charts/kubeprof/crds/",
                path.display(),
                kubeprof_crds::CRDGEN_COMMAND
            );
        }
    }
}
