//! Writes the CRD YAML generated from the Rust types to `crds/yaml/` (and to the Helm chart's
//! `crds/` folder when it exists). `--check` only reports drift, with exit code 1.
use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("yaml")];
    let chart = root.join("../charts/kubeprof/crds");
    if chart.is_dir() {
        dirs.push(chart);
    }
    let files = match kubeprof_crds::generated_crd_files() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRDs: {e}");
            return ExitCode::from(2);
        }
    };
    let mut drift = false;
    for dir in &dirs {
        if !check && let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("crdgen: cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
        for (name, yaml) in &files {
            let path = dir.join(name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == *yaml {
                continue;
            }
            if check {
                eprintln!("crdgen: {} is out of date", path.display());
                drift = true;
            } else if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::from(2);
            } else {
                println!("crdgen: wrote {}", path.display());
            }
        }
    }
    if drift {
        eprintln!(
            "crdgen: run `{}` and commit the result",
            kubeprof_crds::CRDGEN_COMMAND
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
