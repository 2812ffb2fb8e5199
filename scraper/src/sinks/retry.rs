//! What every sink shares about failure: which failures are worth another try (timeouts,
//! connection errors, 429, 5xx, I/O) and which are not (other 4xx, a profile the backend's
//! format cannot carry), and the capped, jittered exponential backoff between tries, which a
//! server's `Retry-After` overrides.

use std::{future::Future, path::PathBuf, time::Duration};

use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable as _};

/// A failed send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The receiver answered with a status that is not a success.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The first characters of the answer.
        body: String,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The HTTP request did not complete (timeout, connection, ...).
    #[error(transparent)]
    Transport(reqwest::Error),
    /// The gRPC call failed.
    #[error("gRPC {:?}: {}", .0.code(), .0.message())]
    Grpc(#[source] tonic::Status),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer task did not finish (it panicked or the runtime is shutting down).
    #[error(transparent)]
    Task(tokio::task::JoinError),
    /// The profile could not be turned into what the backend takes.
    #[error(transparent)]
    Convert(Box<dyn std::error::Error + Send + Sync>),
}

impl SendError {
    /// The error of an HTTP answer that is not a success, with its `Retry-After`.
    pub async fn from_response(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        Self::Status {
            status,
            body: text.chars().take(256).collect(),
            retry_after,
        }
    }

    /// Whether another try may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            Self::Transport(_) | Self::Io { .. } | Self::Task(_) => true,
            Self::Grpc(status) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::ResourceExhausted
            ),
            Self::Convert(_) => false,
        }
    }

    /// A fixed metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Status { status: 429, .. } => "http_429",
            Self::Status { status, .. } if (500..=599).contains(status) => "http_5xx",
            Self::Status { .. } => "http_4xx",
            Self::Transport(e) if e.is_timeout() => "timeout",
            Self::Transport(e) if e.is_connect() => "connect",
            Self::Transport(_) => "request",
            Self::Grpc(status) => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Aborted
                | tonic::Code::Internal => "grpc_unavailable",
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "timeout",
                tonic::Code::ResourceExhausted => "grpc_resource_exhausted",
                _ => "grpc_rejected",
            },
            // A full or read-only disk does not heal by itself quickly, but often does
            // (cleanup, remount): retried with backoff rather than dropped at once.
            Self::Io { .. } | Self::Task(_) => "io",
            Self::Convert(_) => "convert",
        }
    }

    /// How long the server asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Retry timing.
#[derive(Clone, Copy, Debug)]
pub struct RetryConfig {
    /// First backoff.
    pub initial: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// `min(initial * 2^attempt, max)` times a random factor in [0.5, 1.0), for ever. backon's
    /// jitter adds up to 100% to a delay, so its bounds are the halves of ours.
    fn backoff(&self) -> backon::ExponentialBackoff {
        let max = self.max / 2;
        ExponentialBuilder::default()
            .with_min_delay((self.initial / 2).min(max))
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Calls `send` until it succeeds, fails for good, or `closed()` holds after a failure (then
/// that failure is returned). Between tries it waits with `sleep`, which should end early on
/// shutdown; `on_retry` sees each failure that is retried and the wait before the next try.
pub(crate) async fn with_retries<Fut, SleepFut>(
    retry: &RetryConfig,
    send: impl FnMut() -> Fut,
    closed: impl Fn() -> bool,
    sleep: impl Fn(Duration) -> SleepFut + 'static,
    on_retry: impl FnMut(&SendError, Duration),
) -> Result<(), SendError>
where
    Fut: Future<Output = Result<(), SendError>>,
    SleepFut: Future<Output = ()>,
{
    let max = retry.max;
    send.retry(retry.backoff())
        .when(|e| e.retryable() && !closed())
        .adjust(move |e, wait| e.retry_after().or(wait).map(|w| w.min(max)))
        .sleep(sleep)
        .notify(on_retry)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{RetryConfig, SendError};

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_down_to_half() {
        let retry = RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        // backon computes in f32: allow it a microsecond either way.
        let slack = Duration::from_micros(1);
        for (attempt, wait) in retry.backoff().take(10).enumerate() {
            let capped = (retry.initial * (1 << attempt)).min(retry.max);
            assert!(
                wait + slack >= capped / 2 && wait <= capped + slack,
                "attempt {attempt}: {wait:?} outside [{:?}, {capped:?}]",
                capped / 2
            );
        }
    }

    #[test]
    fn timeouts_429_and_5xx_are_retried_other_4xx_are_not() {
        let status = |status, retry_after| SendError::Status {
            status,
            body: String::new(),
            retry_after,
        };
        let ten = Some(Duration::from_secs(10));
        for (e, retryable, reason) in [
            (status(429, ten), true, "http_429"),
            (status(503, None), true, "http_5xx"),
            (status(400, None), false, "http_4xx"),
            (status(404, None), false, "http_4xx"),
            (
                SendError::Grpc(tonic::Status::unavailable("down")),
                true,
                "grpc_unavailable",
            ),
            (
                SendError::Grpc(tonic::Status::deadline_exceeded("slow")),
                true,
                "timeout",
            ),
            (
                SendError::Grpc(tonic::Status::invalid_argument("no")),
                false,
                "grpc_rejected",
            ),
        ] {
            assert_eq!((e.retryable(), e.reason()), (retryable, reason), "{e}");
        }
        assert_eq!(status(429, ten).retry_after(), ten);
    }
}
