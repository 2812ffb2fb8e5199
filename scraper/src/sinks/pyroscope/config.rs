//! The Pyroscope sink's settings.

use std::{collections::BTreeMap, time::Duration};

use kubeprof_crds::policy::{MissingTenant, PyroscopeSink as PyroscopeSpec};

use super::limits::IngestLimits;

use crate::sinks::{SinkBuildError, SpecContext};

/// Authentication towards Pyroscope.
#[derive(Clone)]
pub enum HttpAuth {
    /// Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Bearer token.
    Bearer(String),
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Settings of a Pyroscope sink.
#[derive(Clone, Debug)]
pub struct PyroscopeConfig {
    /// Base URL, e.g. `http://pyroscope:4040`.
    pub url: String,
    /// Tenant (`X-Scope-OrgID`).
    pub tenant_id: Option<String>,
    /// Authentication.
    pub auth: Option<HttpAuth>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Request timeout.
    pub timeout: Duration,
    /// Profiles per request.
    pub max_batch: usize,
    /// The label naming each profile's tenant (`tenantFrom`).
    pub tenant_from: Option<String>,
    /// What a profile without a tenant label gets (`missingTenant`).
    pub missing_tenant: MissingTenant,
    /// What Pyroscope accepts; profiles over the limits are dropped and counted.
    pub limits: IngestLimits,
}

impl PyroscopeConfig {
    /// The settings of `spec`, its credentials resolved.
    pub fn from_spec(spec: &PyroscopeSpec, cx: &SpecContext<'_>) -> Result<Self, SinkBuildError> {
        let auth = match (&spec.basic_auth, &spec.bearer_token_secret) {
            (Some(b), _) => Some(HttpAuth::Basic {
                username: cx.credential(&b.username)?,
                password: cx.credential(&b.password)?,
            }),
            (None, Some(t)) => Some(HttpAuth::Bearer(cx.credential(t)?)),
            (None, None) => None,
        };
        Ok(Self {
            url: spec.url.clone(),
            tenant_id: spec.tenant_id.clone(),
            auth,
            headers: spec.headers.clone(),
            timeout: Duration::from_secs(30),
            max_batch: 16,
            tenant_from: spec.tenant_from.clone(),
            missing_tenant: spec.missing_tenant.unwrap_or_default(),
            limits: IngestLimits::default(),
        })
    }
}
