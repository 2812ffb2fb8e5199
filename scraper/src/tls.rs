//! The process-wide rustls crypto provider.

/// Installs ring as rustls' default provider (once; later calls do nothing). The HTTP client is
/// built without a provider of its own so that one crypto library serves kube, reqwest and tonic.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
