//! Types shared by both resources: secret references, authentication, TLS, namespace selection.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key of a Secret in the same namespace as the object that refers to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = crate::limits::MAX_NAME_LENGTH))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = crate::limits::MAX_NAME_LENGTH))]
    pub key: String,
}

/// A key of a Secret in an explicitly named namespace (cluster-scoped objects have no namespace
/// of their own to default to).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedSecretKeyRef {
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = crate::limits::MAX_DNS_LABEL_LENGTH))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = crate::limits::MAX_NAME_LENGTH))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = crate::limits::MAX_NAME_LENGTH))]
    pub key: String,
}

impl SecretKeyRef {
    /// The same reference, anchored in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> NamespacedSecretKeyRef {
        NamespacedSecretKeyRef {
            namespace: namespace.to_owned(),
            name: self.name.clone(),
            key: self.key.clone(),
        }
    }
}

/// HTTP basic authentication from a Secret in the target's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The key holding the user name.
    pub username: SecretKeyRef,
    /// The key holding the password.
    pub password: SecretKeyRef,
}

/// HTTP basic authentication from Secrets in named namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedBasicAuth {
    /// The key holding the user name.
    pub username: NamespacedSecretKeyRef,
    /// The key holding the password.
    pub password: NamespacedSecretKeyRef,
}

/// TLS settings for scraping an HTTPS endpoint; Secrets live in the target's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM CA bundle used to verify the target's certificate (default: the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
    /// PEM client certificate for mutual TLS; requires `keySecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<SecretKeyRef>,
    /// PEM private key of the client certificate; requires `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<SecretKeyRef>,
    /// Server name to verify instead of the target's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_NAME_LENGTH))]
    pub server_name: Option<String>,
    /// Skip verification of the target's certificate. Encrypts without authenticating the
    /// target: use only for endpoints with self-signed certificates you cannot otherwise trust.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Which namespaces a ProfilingTarget selects pods from (Prometheus Operator's
/// `namespaceSelector`, extended with label selection). With no field set, the target's own
/// namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.any) && self.any) || (!has(self.matchNames) && !has(self.matchLabels) && !has(self.matchExpressions))").message("namespaceSelector.any: true cannot be combined with matchNames, matchLabels or matchExpressions"))]
pub struct NamespaceSelector {
    /// Select pods in every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
    /// Select pods in these namespaces (ORed with the label selector when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_NAMESPACES), inner(length(max = crate::limits::MAX_DNS_LABEL_LENGTH)))]
    pub match_names: Option<Vec<String>>,
    /// Select namespaces whose labels match all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::limits::label_selector)]
    pub match_labels: Option<std::collections::BTreeMap<String, String>>,
    /// Select namespaces whose labels satisfy all of these expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::limits::label_selector)]
    pub match_expressions:
        Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement>>,
}

impl NamespaceSelector {
    /// The label-selector part, if any.
    pub fn label_selector(&self) -> Option<LabelSelector> {
        if self.match_labels.is_none() && self.match_expressions.is_none() {
            return None;
        }
        Some(LabelSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.clone(),
        })
    }
}

/// The HTTP scheme of a profile endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP (the default, as pprof endpoints usually are).
    #[default]
    Http,
    /// HTTPS, verified per `tlsConfig`.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

impl std::str::FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(Self::Http),
            "https" => Ok(Self::Https),
            other => Err(format!("unknown scheme {other:?} (use http or https)")),
        }
    }
}

/// Condition types and reasons used in both resources' status.
pub mod conditions {
    /// The object is reconciled and its jobs are published.
    pub const READY: &str = "Ready";
    /// Something prevents part of the object from working; the reason says what.
    pub const DEGRADED: &str = "Degraded";
    /// A named container port does not exist on a selected pod.
    pub const REASON_PORT_NOT_FOUND: &str = "PortNotFound";
    /// A referenced Secret or key does not exist.
    pub const REASON_SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The selectors match no running pod.
    pub const REASON_NO_MATCHING_PODS: &str = "NoMatchingPods";
    /// A policy limit (interval, types, targets) was exceeded.
    pub const REASON_LIMIT_EXCEEDED: &str = "LimitExceeded";
    /// Scrapes of at least one job are failing.
    pub const REASON_SCRAPE_FAILING: &str = "ScrapeFailing";
    /// A sink refused the profiles of at least one job before sending them, because the store
    /// would refuse them (too many labels, a label too long, a profile too large).
    pub const REASON_PROFILES_REFUSED: &str = "ProfilesRefused";
    /// A field value is invalid in a way the schema could not catch.
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
    /// Selected pods live in a namespace no ProfilingPolicy governs: with no policy there is no
    /// sink to send to, so they get no jobs.
    pub const REASON_NO_POLICY: &str = "NoPolicy";
    /// The eBPF profiler a ProfilingPolicy asks for does not run on some of the nodes it
    /// selects (their scrapers report why: kernel too old, BTF missing, no privilege).
    pub const REASON_EBPF_NOT_RUNNING: &str = "EbpfNotRunning";
    /// Everything is fine.
    pub const REASON_RECONCILED: &str = "Reconciled";
}
