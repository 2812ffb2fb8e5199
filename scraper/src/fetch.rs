//! Pulling a profile over HTTP(S): one shared client per distinct TLS set-up, auth per request,
//! a hard limit on the bytes read, and a deadline on the whole request.
//!
//! Bodies are read as sent (gzip or not): the size limit applies to the bytes on the wire, and
//! decompression, with its own limit, is the pprof layer's.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use kubeprof_crds::{
    health::ScrapeFailure,
    job::{ScrapeAuth, ScrapeJob, ScrapeTls},
};

use crate::credentials::{self, CredentialError, SecretSource};

/// Why a fetch failed. [`FetchError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The deadline passed.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// No connection.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A non-2xx answer.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The first bytes of the body.
        body: String,
    },
    /// The body exceeds the limit.
    #[error("body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A credential could not be read.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// TLS failed: an unusable CA or client certificate, or a handshake the target's
    /// certificate (or its demand for ours) did not pass.
    #[error("TLS: {0}")]
    Tls(String),
    /// Anything else the HTTP client reported.
    #[error("request failed: {0}")]
    Request(String),
}

impl FetchError {
    /// Why, as reported in health reports and metrics.
    pub fn reason(&self) -> ScrapeFailure {
        match self {
            Self::Timeout(_) => ScrapeFailure::Timeout,
            Self::Connect(_) => ScrapeFailure::Connect,
            Self::Status { .. } => ScrapeFailure::HttpError,
            Self::BodyTooLarge { .. } => ScrapeFailure::BodyTooLarge,
            Self::Credential(_) => ScrapeFailure::Credential,
            Self::Tls(_) => ScrapeFailure::Tls,
            Self::Request(_) => ScrapeFailure::Request,
        }
    }
}

/// Clients are shared per TLS configuration (and per address, with a `serverName`).
type ClientKey = (Option<ScrapeTls>, Option<SocketAddr>);

/// Fetches profiles; cheap to clone.
#[derive(Clone, Debug)]
pub struct Fetcher {
    clients: Arc<Mutex<HashMap<ClientKey, reqwest::Client>>>,
    secrets: Arc<dyn SecretSource>,
}

impl Fetcher {
    /// A fetcher reading Secret references from `secrets`.
    pub fn new(secrets: Arc<dyn SecretSource>) -> Self {
        crate::tls::install_default_provider();
        Self {
            clients: Arc::default(),
            secrets,
        }
    }

    /// The client for a TLS configuration. With a `serverName`, the client also pins the
    /// target's address to that name (`resolve`), so it is specific to the address.
    fn client(
        &self,
        tls: Option<&ScrapeTls>,
        pinned: Option<(&str, SocketAddr)>,
    ) -> Result<reqwest::Client, FetchError> {
        let key = (tls.cloned(), pinned.map(|(_, a)| a));
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .no_gzip()
            .user_agent(concat!("kubeprof-scraper/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .connect_timeout(Duration::from_secs(5));
        if let Some((name, addr)) = pinned {
            builder = builder.resolve(name, addr);
        }
        if let Some(tls) = tls {
            if let Some(ca) = &tls.ca {
                let pem = credentials::resolve(ca, self.secrets.as_ref())?;
                for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| FetchError::Tls(format!("CA bundle: {e}")))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let mut pem = credentials::resolve(cert, self.secrets.as_ref())?;
                pem.push('\n');
                pem.push_str(&credentials::resolve(key, self.secrets.as_ref())?);
                let identity = reqwest::Identity::from_pem(pem.as_bytes())
                    .map_err(|e| FetchError::Tls(format!("client certificate: {e}")))?;
                builder = builder.identity(identity);
            }
            if tls.insecure_skip_verify {
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
        }
        let client = builder
            .build()
            .map_err(|e| FetchError::Tls(e.to_string()))?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, client.clone());
        Ok(client)
    }

    /// The URL a job pulls.
    pub fn url(job: &ScrapeJob) -> String {
        let mut url = format!(
            "{}://{}{}",
            job.scheme.as_str(),
            job.address,
            job.profile.path
        );
        let mut query: Vec<(String, String)> = job
            .params
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
            .filter(|(k, _)| !(k == "seconds" && job.profile.seconds.is_some()))
            .collect();
        if let Some(s) = job.profile.seconds {
            query.push(("seconds".into(), s.to_string()));
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&urlencode(k));
            url.push('=');
            url.push_str(&urlencode(v));
        }
        url
    }

    /// Pulls the job's profile; the body as sent, at most `limit` bytes.
    pub async fn fetch(&self, job: &ScrapeJob, limit: u64) -> Result<Bytes, FetchError> {
        let deadline = job.request_deadline();
        match tokio::time::timeout(deadline, self.fetch_inner(job, limit)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(deadline)),
        }
    }

    async fn fetch_inner(&self, job: &ScrapeJob, limit: u64) -> Result<Bytes, FetchError> {
        let server_name = job
            .tls
            .as_ref()
            .and_then(|t| t.server_name.as_deref())
            .filter(|n| !n.is_empty());
        let (client, url) = match server_name {
            // Verify the certificate against `serverName` while connecting to the address: the
            // URL names the server, and the client resolves that name to the target's address.
            Some(name) => {
                let addr = resolve(&job.address).await?;
                let client = self.client(job.tls.as_ref(), Some((name, addr)))?;
                let mut pinned = job.clone();
                pinned.address = format!("{name}:{}", addr.port());
                (client, Self::url(&pinned))
            }
            None => (self.client(job.tls.as_ref(), None)?, Self::url(job)),
        };
        let mut request = client
            .get(url)
            .header(reqwest::header::ACCEPT_ENCODING, "gzip");
        match &job.auth {
            Some(ScrapeAuth::Bearer { token }) => {
                request = request.bearer_auth(credentials::resolve(token, self.secrets.as_ref())?);
            }
            Some(ScrapeAuth::Basic { username, password }) => {
                request = request.basic_auth(
                    credentials::resolve(username, self.secrets.as_ref())?,
                    Some(credentials::resolve(password, self.secrets.as_ref())?),
                );
            }
            None => {}
        }
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(256)])
                .trim()
                .to_owned();
            return Err(FetchError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::BodyTooLarge { limit });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// The socket address of `host:port` (an IP, or a name looked up once).
async fn resolve(address: &str) -> Result<SocketAddr, FetchError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| FetchError::Connect(format!("cannot resolve {address}: {e}")))?
        .next()
        .ok_or_else(|| FetchError::Connect(format!("{address} resolves to no address")))
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout(Duration::ZERO)
    } else if e.is_connect() {
        // The innermost cause says why (refused, unreachable, TLS handshake).
        let mut source: &dyn std::error::Error = &e;
        let mut tls = false;
        loop {
            // Connectors wrap rustls' error in ways that hide its type; its messages are stable.
            let text = source.to_string().to_ascii_lowercase();
            tls |= source.is::<rustls::Error>()
                || source
                    .downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .is_some_and(|inner| inner.is::<rustls::Error>())
                || text.contains("certificate")
                || text.contains("handshake")
                || text.contains("tls");
            match source.source() {
                Some(s) => source = s,
                None => break,
            }
        }
        if tls {
            FetchError::Tls(source.to_string())
        } else {
            FetchError::Connect(source.to_string())
        }
    } else {
        FetchError::Request(e.to_string())
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
