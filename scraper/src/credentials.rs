//! Resolving [`CredentialRef`]s: inline values, files, and Secrets.

use std::path::PathBuf;

use kubeprof_crds::{NamespacedSecretKeyRef, job::CredentialRef};

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The reference names nothing.
    #[error("credential reference names no value, file or secret")]
    Empty,
    /// A file could not be read.
    #[error("cannot read credential file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
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
        return std::fs::read_to_string(path)
            .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|source| CredentialError::File {
                path: path.clone(),
                source,
            });
    }
    if let Some(s) = &r.secret {
        return secrets.read(s);
    }
    Err(CredentialError::Empty)
}
