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

use super::budget::{ByteBudget, Reservation};
use crate::credentials::{self, CredentialError, SecretSource};

/// Most bytes of an error response's body read (its first 256 are shown).
const ERROR_BODY_BYTES: usize = 4096;

/// Bytes of a body read without reserving them from the body budget: a Go service's profiles
/// are a few KiB to a few hundred, so ordinary targets never wait for the budget.
pub const FREE_BODY_BYTES: usize = 256 << 10;

/// How long a body past [`FREE_BODY_BYTES`] waits for its share of the body budget. A waiting
/// scrape keeps its connection, its buffer and the HTTP client's read buffer (up to ~400 KiB)
/// outside any budget, so waits are short: the budget's holders are bodies being read, which
/// take milliseconds unless their target trickles them, and then waiting is no use anyway.
pub const BODY_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Why a fetch failed. [`FetchError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The deadline passed.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// No connection.
    #[error("cannot connect: {0}")]
    Connect(#[source] ConnectError),
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
    /// The body's share of the body budget was not free in time.
    #[error(
        "the body is past {free} KiB and the scraper's budget for larger bodies stayed taken by \
         other scrapes for {waited:?} (targets sending large bodies at once)",
        free = FREE_BODY_BYTES >> 10
    )]
    BodyBudget {
        /// How long the scrape waited.
        waited: Duration,
    },
    /// A credential could not be read.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// TLS failed: an unusable CA or client certificate, or a handshake the target's
    /// certificate (or its demand for ours) did not pass.
    #[error("TLS: {0}")]
    Tls(#[source] TlsError),
    /// The job's scheme, address and path do not make a URL.
    #[error("request failed: invalid URL {url:?}: {source}")]
    Url {
        /// What they make.
        url: String,
        /// Why it is not a URL.
        #[source]
        source: url::ParseError,
    },
    /// Anything else the HTTP client reported.
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target's name does not resolve.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// `host:port`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The target's name resolves to nothing.
    #[error("{address} resolves to no address")]
    NoAddress {
        /// `host:port`.
        address: String,
    },
    /// Refused, unreachable, reset (the innermost cause is shown).
    #[error("{}", innermost(.0))]
    Transport(#[source] reqwest::Error),
}

/// What went wrong with TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA bundle is not PEM certificates.
    #[error("CA bundle: {0}")]
    CaBundle(#[source] reqwest::Error),
    /// The client certificate and key are not a usable PEM identity.
    #[error("client certificate: {0}")]
    ClientCertificate(#[source] reqwest::Error),
    /// The HTTP client would not take the TLS settings.
    #[error("{0}")]
    Client(#[source] reqwest::Error),
    /// The handshake failed (the innermost cause is shown).
    #[error("{}", innermost(.0))]
    Handshake(#[source] reqwest::Error),
}

/// The message of the innermost cause: the one that says why (refused, unknown issuer, ...).
fn innermost(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}

impl FetchError {
    /// Why, as reported in health reports and metrics.
    pub fn reason(&self) -> ScrapeFailure {
        match self {
            Self::Timeout(_) => ScrapeFailure::Timeout,
            Self::Connect(_) => ScrapeFailure::Connect,
            Self::Status { .. } => ScrapeFailure::HttpError,
            Self::BodyTooLarge { .. } => ScrapeFailure::BodyTooLarge,
            Self::BodyBudget { .. } => ScrapeFailure::BodyBudget,
            Self::Credential(_) => ScrapeFailure::Credential,
            Self::Tls(_) => ScrapeFailure::Tls,
            Self::Url { .. } | Self::Request(_) => ScrapeFailure::Request,
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
                    .map_err(|e| FetchError::Tls(TlsError::CaBundle(e)))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let mut pem = credentials::resolve(cert, self.secrets.as_ref())?;
                pem.push('\n');
                pem.push_str(&credentials::resolve(key, self.secrets.as_ref())?);
                let identity = reqwest::Identity::from_pem(pem.as_bytes())
                    .map_err(|e| FetchError::Tls(TlsError::ClientCertificate(e)))?;
                builder = builder.identity(identity);
            }
            if tls.insecure_skip_verify {
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
        }
        let client = builder
            .build()
            .map_err(|e| FetchError::Tls(TlsError::Client(e)))?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, client.clone());
        Ok(client)
    }

    /// The URL a job pulls: its address and path, its params, and `seconds` for a profile
    /// sampled over a period (which replaces a `seconds` param).
    pub fn url(job: &ScrapeJob) -> Result<reqwest::Url, FetchError> {
        let base = format!(
            "{}://{}{}",
            job.scheme.as_str(),
            job.address,
            job.profile.path
        );
        let mut url = reqwest::Url::parse(&base).map_err(|source| FetchError::Url {
            url: base.clone(),
            source,
        })?;
        let params = job
            .params
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
            .filter(|(k, _)| !(*k == "seconds" && job.profile.seconds.is_some()));
        let seconds = job.profile.seconds.map(|s| s.to_string());
        let query: Vec<(&str, &str)> = params
            .chain(seconds.as_deref().map(|s| ("seconds", s)))
            .collect();
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Pulls the job's profile; the body as sent, at most `limit` bytes.
    pub async fn fetch(&self, job: &ScrapeJob, limit: u64) -> Result<Bytes, FetchError> {
        self.fetch_within(job, limit, None)
            .await
            .map(|(body, _)| body)
    }

    /// [`Self::fetch`], the bytes of a body past [`FREE_BODY_BYTES`] reserved from `budget`
    /// before they are read (waiting for them within the request's deadline), and held by the
    /// returned reservation for as long as the body is kept.
    pub(super) async fn fetch_within(
        &self,
        job: &ScrapeJob,
        limit: u64,
        budget: Option<&ByteBudget>,
    ) -> Result<(Bytes, Reservation), FetchError> {
        let deadline = job.request_deadline();
        match tokio::time::timeout(deadline, self.fetch_inner(job, limit, budget)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(deadline)),
        }
    }

    async fn fetch_inner(
        &self,
        job: &ScrapeJob,
        limit: u64,
        budget: Option<&ByteBudget>,
    ) -> Result<(Bytes, Reservation), FetchError> {
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
                (client, Self::url(&pinned)?)
            }
            None => (self.client(job.tls.as_ref(), None)?, Self::url(job)?),
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
            // Only the start of an error body is shown; reading more would let a target make
            // the scraper hold any amount (a 1 GiB 500 page took 2.2 GB of RSS).
            let mut body = BytesMut::new();
            while body.len() < ERROR_BODY_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
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
        let too_large = || FetchError::BodyTooLarge { limit };
        let mut held = Reservation::default();
        // The whole announced length at once, holding nothing yet; the body's buffer is sized
        // to it.
        let announced = response
            .content_length()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let wait = |bytes: usize| async move {
            let Some(budget) = budget else {
                return Ok(Reservation::default());
            };
            match tokio::time::timeout(BODY_BUDGET_WAIT, budget.reserve(bytes)).await {
                Ok(reserved) => reserved.ok_or_else(too_large),
                Err(_) => Err(FetchError::BodyBudget {
                    waited: BODY_BUDGET_WAIT,
                }),
            }
        };
        if budget.is_some() && announced > FREE_BODY_BYTES {
            held = wait(announced).await?;
        }
        let mut body = BytesMut::with_capacity(announced.min(FREE_BODY_BYTES.max(held.bytes())));
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            let need = body.len() + chunk.len();
            if need as u64 > limit {
                return Err(too_large());
            }
            if let Some(budget) = budget
                && need > FREE_BODY_BYTES
                && need > held.bytes()
            {
                // The buffer doubles as it grows: reserve what it will take.
                let want = need.next_power_of_two();
                if !budget.try_grow(&mut held, want) {
                    // Waiting while holding: only bodies past the free bytes do, and a short
                    // wait ends it, so two large bodies cannot keep each other waiting.
                    let more = wait(want - held.bytes()).await?;
                    held.merge(more);
                }
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.freeze(), held))
    }
}

/// The socket address of `host:port` (an IP, or a name looked up once).
async fn resolve(address: &str) -> Result<SocketAddr, FetchError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let connect = |e| FetchError::Connect(e);
    tokio::net::lookup_host(address)
        .await
        .map_err(|source| {
            connect(ConnectError::Resolve {
                address: address.to_owned(),
                source,
            })
        })?
        .next()
        .ok_or_else(|| {
            connect(ConnectError::NoAddress {
                address: address.to_owned(),
            })
        })
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout(Duration::ZERO)
    } else if e.is_connect() {
        if is_tls(&e) {
            FetchError::Tls(TlsError::Handshake(e))
        } else {
            FetchError::Connect(ConnectError::Transport(e))
        }
    } else {
        FetchError::Request(e)
    }
}

/// Whether a connection failed in the TLS handshake.
fn is_tls(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        // Connectors wrap rustls' error in ways that hide its type; its messages are stable.
        let text = s.to_string().to_ascii_lowercase();
        if s.is::<rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>())
            || text.contains("certificate")
            || text.contains("handshake")
            || text.contains("tls")
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::Fetcher;
    use crate::config::Config;

    #[test]
    fn the_url_carries_the_params_encoded_and_the_sampling_period() {
        let config = Config::parse(
            "targets:\n  - name: a\n    addresses: [\"10.0.0.1:6060\"]\n    interval: 20s\n    params: {q: [\"a b&c\"], seconds: [\"5\"]}\n    profiles: {cpu: {seconds: 15}}\nsinks:\n  - name: local\n    file: {directory: ./p}\n",
        )
        .unwrap();
        let set = config.job_set();
        let url = |name: &str| {
            let job = set.jobs.iter().find(|j| j.profile.name == name).unwrap();
            Fetcher::url(job).unwrap().to_string()
        };
        // `seconds` of a sampled profile is the profile's; a param of that name is dropped.
        assert_eq!(
            url("process_cpu"),
            "http://10.0.0.1:6060/debug/pprof/profile?q=a+b%26c&seconds=15"
        );
        assert_eq!(
            url("goroutine"),
            "http://10.0.0.1:6060/debug/pprof/goroutine?q=a+b%26c&seconds=5"
        );
    }

    /// A body past the free bytes waits briefly for its share of the body budget and holds it
    /// while the body is kept; when the budget stays taken it gives up long before the
    /// deadline (a waiting scrape holds memory outside every budget).
    #[tokio::test]
    async fn a_large_body_waits_briefly_for_the_body_budget_and_holds_its_share() {
        use axum::{Router, routing::get};

        use super::FREE_BODY_BYTES;
        use crate::pull::budget::ByteBudget;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = vec![7u8; 600 << 10];
        let app = Router::new().route(
            "/debug/pprof/goroutine",
            get(move || {
                let body = body.clone();
                async move { body }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = Config::parse(&format!(
            "targets:\n  - name: a\n    addresses: [\"{addr}\"]\n    interval: 30s\n    scrapeTimeout: 20s\nsinks:\n  - name: local\n    file: {{directory: ./p}}\n"
        ))
        .unwrap();
        let job = config
            .job_set()
            .jobs
            .into_iter()
            .find(|j| j.profile.name == "goroutine")
            .unwrap();
        let fetcher = Fetcher::new(std::sync::Arc::new(crate::SecretsDir(None)));
        let budget = ByteBudget::new(1 << 20);
        let others = budget.reserve(1 << 20).await.unwrap();
        // Held elsewhere for longer than the wait: refused for the budget, not timed out.
        let err = fetcher
            .fetch_within(&job, 16 << 20, Some(&budget))
            .await
            .unwrap_err();
        assert_eq!(err.reason().as_str(), "body_budget", "{err}");
        // Freed during the wait: the body is read.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            drop(others);
        });
        let (got, held) = fetcher
            .fetch_within(&job, 16 << 20, Some(&budget))
            .await
            .unwrap();
        assert_eq!(got.len(), 600 << 10);
        assert!(held.bytes() >= got.len() && got.len() > FREE_BODY_BYTES);
    }
}
