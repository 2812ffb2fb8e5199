//! Resolving [`CredentialRef`]s: inline values, files, and Secrets.

use std::path::PathBuf;

use kubeprof_crds::{NamespacedSecretKeyRef, job::CredentialRef};

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The reference names nothing.
    #[error("credential reference names no value, file or secret")]
    Empty,
    /// A file cannot be used.
    #[error("credential file {path} {problem}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        problem: FileProblem,
    },
    /// A Secret or key does not exist or could not be read.
    #[error("secret {namespace}/{name} key {key}: {message}")]
    Secret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Key.
        key: String,
        /// Why.
        message: String,
    },
}

/// Why a credential file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    /// Nothing at the path.
    #[error("does not exist")]
    Missing,
    /// Permissions, a directory, not UTF-8, an I/O error.
    #[error("is not readable: {0}")]
    Unreadable(#[source] std::io::Error),
    /// Nothing but whitespace: a token or password that was never written.
    #[error("is empty")]
    Empty,
}

/// The content of a credential file without its trailing newline; the one reader of credential
/// files, so `check-config`, `run` and each scrape give the same reason.
pub fn read_file(path: &str) -> Result<String, CredentialError> {
    let problem = match std::fs::read_to_string(path) {
        Ok(v) if v.trim().is_empty() => FileProblem::Empty,
        Ok(v) => return Ok(v.trim_end_matches(['\n', '\r']).to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileProblem::Missing,
        Err(e) => FileProblem::Unreadable(e),
    };
    Err(CredentialError::File {
        path: path.to_owned(),
        problem,
    })
}

/// Reads Secret keys. Standalone mode reads a directory laid out as Kubernetes mounts Secrets;
/// cluster mode reads the API.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The value of `r`.
    fn read(&self, r: &NamespacedSecretKeyRef) -> Result<String, CredentialError>;
}

/// Secrets as files: `<dir>/<namespace>/<name>/<key>`.
#[derive(Debug, Clone)]
pub struct SecretsDir(pub Option<PathBuf>);

impl SecretSource for SecretsDir {
    fn read(&self, r: &NamespacedSecretKeyRef) -> Result<String, CredentialError> {
        let err = |message: String| CredentialError::Secret {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            key: r.key.clone(),
            message,
        };
        let Some(dir) = &self.0 else {
            return Err(err("no --secrets-dir given to read secrets from".into()));
        };
        let safe = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
        if !(safe(&r.namespace) && safe(&r.name) && safe(&r.key)) {
            return Err(err("invalid name".into()));
        }
        let path = dir.join(&r.namespace).join(&r.name).join(&r.key);
        std::fs::read_to_string(&path)
            .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| err(format!("{}: {e}", path.display())))
    }
}

/// Resolves `r` with `secrets` for Secret references.
pub fn resolve(r: &CredentialRef, secrets: &dyn SecretSource) -> Result<String, CredentialError> {
    if let Some(v) = &r.value {
        return Ok(v.clone());
    }
    if let Some(path) = &r.file {
        return read_file(path);
    }
    if let Some(s) = &r.secret {
        return secrets.read(s);
    }
    Err(CredentialError::Empty)
}
