//! The scrape-health contract: what each scraper reports back (one ConfigMap per node, next to
//! its job shard) so that the operator can show ACTIVE and FAILING on the objects.
//!
//! Names of the published objects are defined here too, as both sides must agree on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::constants::{HEALTH_OBJECT_PREFIX, JOBS_OBJECT_PREFIX};

/// The format this crate writes and reads.
pub const HEALTH_FORMAT_VERSION: u32 = 1;
/// Key of the report's JSON inside the ConfigMap's data.
pub const HEALTH_DATA_KEY: &str = "health.json";
/// Key of the eBPF profiler's own report ([`EbpfReport`]) in the same ConfigMap's data, written
/// by a scraper that runs only the shard's eBPF section (`--sources ebpf`, the chart's eBPF
/// DaemonSet) with its own server-side-apply field manager. Each key of `data` is owned by the
/// manager that applied it, so the pull scraper's [`HEALTH_DATA_KEY`] and this one never
/// overwrite each other.
pub const EBPF_HEALTH_DATA_KEY: &str = "ebpf.json";
/// Key of a gzip-compressed shard in `binaryData`, used when the JSON would come near the
/// ConfigMap size limit.
pub const JOB_SHARD_GZIP_KEY: &str = "jobs.json.gz";

/// Shards larger than this are stored gzip-compressed: the API refuses objects over 1 MiB, and
/// every byte written is a byte the API server decodes, etcd stores (with its history until
/// compaction) and each write's watchers receive. At 100 pods a node a shard is ~90 KiB of
/// JSON and ~12 KiB compressed; below this size it stays readable with `kubectl get -o yaml`.
pub const GZIP_ABOVE_BYTES: usize = 16 * 1024;

/// Largest decompressed shard a scraper accepts.
const MAX_SHARD_BYTES: u64 = 64 * 1024 * 1024;

/// The `data` / `binaryData` of a shard's ConfigMap: plain JSON, or gzip above
/// [`GZIP_ABOVE_BYTES`].
pub fn shard_to_data(shard: &crate::job::JobShard) -> (Option<TextData>, Option<BinaryData>) {
    ShardPayload::new(shard.to_json()).to_data()
}

/// A shard's JSON as its ConfigMap carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardPayload {
    /// Up to [`GZIP_ABOVE_BYTES`]: as is, in `data`.
    Json(String),
    /// Larger: gzip-compressed, in `binaryData`.
    Gzip(Vec<u8>),
}

impl ShardPayload {
    /// The payload of a shard serialized to `json`.
    pub fn new(json: String) -> Self {
        if json.len() <= GZIP_ABOVE_BYTES {
            Self::Json(json)
        } else {
            Self::Gzip(gzip(json.as_bytes()))
        }
    }

    /// The JSON again. Only for payloads made by [`ShardPayload::new`]: a payload read from
    /// elsewhere goes through [`shard_from_config_map`].
    pub fn json(&self) -> Result<std::borrow::Cow<'_, str>, crate::job::JobShardError> {
        use crate::job::JobShardError;
        match self {
            Self::Json(json) => Ok(std::borrow::Cow::Borrowed(json)),
            Self::Gzip(gz) => {
                // Header and trailer as `gzip` writes them; the deflate stream between.
                let deflated = gz
                    .get(10..gz.len().saturating_sub(8))
                    .ok_or_else(|| JobShardError::Compressed("too short".into()))?;
                let raw = miniz_oxide::inflate::decompress_to_vec_with_limit(
                    deflated,
                    MAX_SHARD_BYTES as usize,
                )
                .map_err(|e| JobShardError::Compressed(format!("{e:?}")))?;
                String::from_utf8(raw)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| JobShardError::Compressed(e.to_string()))
            }
        }
    }

    /// Bytes stored.
    pub fn len(&self) -> usize {
        match self {
            Self::Json(json) => json.len(),
            Self::Gzip(gz) => gz.len(),
        }
    }

    /// Whether nothing is stored (never, for a shard).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ConfigMap's `data` and `binaryData`.
    pub fn to_data(&self) -> (Option<TextData>, Option<BinaryData>) {
        match self {
            Self::Json(json) => (
                Some(BTreeMap::from([(
                    crate::job::JOB_SHARD_DATA_KEY.to_string(),
                    json.clone(),
                )])),
                None,
            ),
            Self::Gzip(gz) => (
                None,
                Some(BTreeMap::from([(
                    JOB_SHARD_GZIP_KEY.to_string(),
                    k8s_openapi::ByteString(gz.clone()),
                )])),
            ),
        }
    }
}

/// gzip at level 1, with miniz_oxide itself rather than through flate2, whose one backend per
/// binary is zlib-rs wherever blazesym is linked (twice as slow at level 1; see kubeprof-pprof's
/// `gzip`, of which this is a copy: the contract crate depends on nothing of ours). Level 1
/// keeps compressing a thousand shards under a second of one core; the JSON of jobs
/// compresses about sevenfold at it.
fn gzip(raw: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(raw, 1);
    let mut out = Vec::with_capacity(deflated.len() + 18);
    // RFC 1952: magic, deflate, no flags, no time, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    // ISIZE is the length modulo 2^32.
    let isize = (raw.len() as u64 & u64::from(u32::MAX)) as u32;
    out.extend_from_slice(&isize.to_le_bytes());
    out
}

/// A ConfigMap's `data`.
pub type TextData = BTreeMap<String, String>;
/// A ConfigMap's `binaryData`.
pub type BinaryData = BTreeMap<String, k8s_openapi::ByteString>;

/// Reads the shard a ConfigMap carries (plain or gzip-compressed); `None` when it holds none.
pub fn shard_from_config_map(
    cm: &k8s_openapi::api::core::v1::ConfigMap,
) -> Option<Result<crate::job::JobShard, crate::job::JobShardError>> {
    use crate::job::{JOB_SHARD_DATA_KEY, JobShard, JobShardError};
    if let Some(json) = cm.data.as_ref().and_then(|d| d.get(JOB_SHARD_DATA_KEY)) {
        return Some(JobShard::from_json(json));
    }
    let gz = cm
        .binary_data
        .as_ref()
        .and_then(|d| d.get(JOB_SHARD_GZIP_KEY))?;
    use std::io::Read as _;
    let mut json = String::new();
    if let Err(e) = flate2::read::GzDecoder::new(gz.0.as_slice())
        .take(MAX_SHARD_BYTES)
        .read_to_string(&mut json)
    {
        return Some(Err(JobShardError::Compressed(e.to_string())));
    }
    Some(JobShard::from_json(&json))
}

/// Longest ConfigMap name the API accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

fn object_name(prefix: &str, node: Option<&str>) -> String {
    match node {
        None => prefix.to_string(),
        // A node name is a DNS subdomain, so `<prefix>.<node>` is one too, unless too long:
        // then the tail is replaced by a hash, which keeps names unique.
        Some(node) => {
            let name = format!("{prefix}.{node}");
            if name.len() <= MAX_NAME {
                return name;
            }
            let hash = format!("{:016x}", fnv1a(node.as_bytes()));
            let keep = MAX_NAME - hash.len() - 1;
            let mut head = name[..keep].trim_end_matches(['.', '-']).to_string();
            head.push('.');
            head.push_str(&hash);
            head
        }
    }
}

// FNV-1a: enough to keep over-long names distinct; no dependency for a rare case.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Name of the ConfigMap holding the job shard of `node` (`None`: jobs without a node).
pub fn jobs_object_name(node: Option<&str>) -> String {
    object_name(JOBS_OBJECT_PREFIX, node)
}

/// Name of the ConfigMap holding the scrape health reported by `node`'s scraper.
pub fn health_object_name(node: Option<&str>) -> String {
    object_name(HEALTH_OBJECT_PREFIX, node)
}

/// `node` as a label value, when it is one (63 characters at most); long names go without.
pub fn node_label_value(node: &str) -> Option<&str> {
    (node.len() <= 63).then_some(node)
}

/// What one scraper reports. Only failing jobs are listed one by one, so the report stays small
/// and changes only when something breaks or recovers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// [`HEALTH_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The reporting scraper's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Jobs the scraper runs.
    pub jobs: u32,
    /// Jobs whose last scrape failed, by job id.
    #[serde(default)]
    pub failing: BTreeMap<String, FailingJob>,
    /// Per origin (`<kind>/<namespace>/<name>`), the last successful scrape of any of its jobs,
    /// in Unix seconds rounded down to the report interval.
    #[serde(default)]
    pub last_success: BTreeMap<String, i64>,
    /// The eBPF profiler's state, from a scraper that runs the shard's eBPF section (absent
    /// from one that does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<EbpfHealth>,
    /// Jobs whose last profile a sink refused to send because the store would refuse it
    /// (Pyroscope's ingestion limits), by job id. Such profiles are counted as dropped and
    /// never retried; this tells the job's target which labels or sizes to fix. A later
    /// profile of the job that the sink sends clears the entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused: BTreeMap<String, RefusedProfile>,
}

/// A job's profile that a sink refused before sending it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedProfile {
    /// The sink's key in the shard.
    pub sink: String,
    /// Which of the store's limits the profile broke.
    pub reason: SinkRefusal,
    /// The profile's labels, `{name="value", ...}`, cut to [`MAX_REFUSED_LABELS`] bytes.
    pub labels: String,
}

/// Longest label text a [`RefusedProfile`] carries (a report must stay small).
pub const MAX_REFUSED_LABELS: usize = 1024;

impl RefusedProfile {
    /// The refusal of a profile labelled `labels`, the label text cut to its bound.
    pub fn new(sink: &str, reason: SinkRefusal, labels: &crate::relabel::Labels) -> Self {
        let mut text = String::from("{");
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(&format!("{k}={v:?}"));
            if text.len() > MAX_REFUSED_LABELS {
                break;
            }
        }
        text.push('}');
        if text.len() > MAX_REFUSED_LABELS {
            let mut cut = MAX_REFUSED_LABELS - 3;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        Self {
            sink: sink.to_owned(),
            reason,
            labels: text,
        }
    }
}

/// Why a sink refused a profile before sending it: the store's limit it would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkRefusal {
    /// More labels than the store takes per series.
    TooManyLabels,
    /// A label name longer than the store takes.
    LabelNameTooLong,
    /// A label value longer than the store takes.
    LabelValueTooLong,
    /// The uncompressed profile is larger than the store takes.
    ProfileTooLarge,
    /// More samples than the store takes in one profile.
    TooManySamples,
    /// A reason this reader does not know (written by a newer scraper).
    #[serde(other)]
    Unknown,
}

impl SinkRefusal {
    /// The reason as written in reports and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooManyLabels => "too_many_labels",
            Self::LabelNameTooLong => "label_name_too_long",
            Self::LabelValueTooLong => "label_value_too_long",
            Self::ProfileTooLarge => "profile_too_large",
            Self::TooManySamples => "too_many_samples",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for SinkRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether this node's eBPF profiler runs, and if not, why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EbpfHealth {
    /// The BPF program is loaded and sampling.
    pub running: bool,
    /// Why it does not run (kernel too old, BTF missing, no privilege), for the user; shown
    /// on the policies that select the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an eBPF-only scraper reports under [`EBPF_HEALTH_DATA_KEY`]: its node's
/// [`EbpfHealth`], on its own, so that it needs no part of the pull scraper's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EbpfReport {
    /// [`HEALTH_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The reporting profiler's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Whether the profiler runs, and if not, why.
    #[serde(flatten)]
    pub ebpf: EbpfHealth,
}

impl EbpfReport {
    /// Stable JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks the format version.
    pub fn from_json(json: &str) -> Result<Self, HealthReportError> {
        parse_versioned(json, |r: &Self| r.format_version)
    }
}

/// Why a scrape failed: the fine reason the scraper reports, the operator turns into a status
/// condition, and metrics use as a bounded label value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ScrapeFailure {
    /// The request did not finish within the scrape timeout.
    Timeout,
    /// The target could not be reached.
    Connect,
    /// The target answered with an HTTP error status.
    HttpError,
    /// The body exceeded the profile size limit.
    BodyTooLarge,
    /// The body was past the bytes every scrape may read at once, and the scraper's budget for
    /// larger bodies stayed taken by other scrapes (targets sending large bodies at once).
    BodyBudget,
    /// A referenced credential (Secret or file) could not be read.
    Credential,
    /// The TLS handshake failed.
    Tls,
    /// The request could not be built or sent.
    Request,
    /// The body was empty.
    Empty,
    /// The gzip stream ended early.
    TruncatedGzip,
    /// The gzip stream is corrupt.
    CorruptGzip,
    /// The decompressed profile exceeded its limit.
    TooLarge,
    /// The body is not a pprof protobuf.
    NotPprof,
    /// The profile's string table does not start with "".
    BadStringTable,
    /// The profile declares no sample types.
    NoSampleTypes,
    /// A string index points outside the string table.
    DanglingString,
    /// A sample has a different number of values than there are sample types.
    ValueCountMismatch,
    /// A sample or location refers to a missing location.
    DanglingLocation,
    /// A location refers to a missing mapping.
    DanglingMapping,
    /// A line refers to a missing function.
    DanglingFunction,
    /// An id is zero or repeated.
    BadId,
    /// A reason this reader does not know (written by a newer scraper).
    #[default]
    #[serde(other)]
    Unknown,
}

impl ScrapeFailure {
    /// The reason as written in reports and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::HttpError => "http_error",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyBudget => "body_budget",
            Self::Credential => "credential",
            Self::Tls => "tls",
            Self::Request => "request",
            Self::Empty => "empty",
            Self::TruncatedGzip => "truncated_gzip",
            Self::CorruptGzip => "corrupt_gzip",
            Self::TooLarge => "too_large",
            Self::NotPprof => "not_pprof",
            Self::BadStringTable => "bad_string_table",
            Self::NoSampleTypes => "no_sample_types",
            Self::DanglingString => "dangling_string",
            Self::ValueCountMismatch => "value_count_mismatch",
            Self::DanglingLocation => "dangling_location",
            Self::DanglingMapping => "dangling_mapping",
            Self::DanglingFunction => "dangling_function",
            Self::BadId => "bad_id",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ScrapeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job whose last scrape failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailingJob {
    /// Why it failed.
    pub reason: ScrapeFailure,
    /// The error, for the user.
    pub message: String,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// Why a health report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HealthReportError {
    /// Not JSON of the expected shape.
    #[error("health report is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer scraper.
    #[error(
        "health report has format version {found}, this operator reads version {HEALTH_FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
}

/// Parses either key of a health report, refusing another format version.
fn parse_versioned<T: serde::de::DeserializeOwned>(
    json: &str,
    version: impl Fn(&T) -> u32,
) -> Result<T, HealthReportError> {
    let report: T = serde_json::from_str(json)?;
    match version(&report) {
        HEALTH_FORMAT_VERSION => Ok(report),
        found => Err(HealthReportError::UnsupportedVersion { found }),
    }
}

impl HealthReport {
    /// Stable JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks the format version.
    pub fn from_json(json: &str) -> Result<Self, HealthReportError> {
        parse_versioned(json, |r: &Self| r.format_version)
    }
}

/// Key of an origin in [`HealthReport::last_success`].
pub fn origin_key(origin: &crate::job::JobOrigin) -> String {
    format!(
        "{}/{}/{}",
        origin.kind.as_str(),
        origin.namespace,
        origin.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_shows_the_labels_within_its_bound() {
        let labels = crate::relabel::Labels::from([
            ("__name__".to_string(), "memory".to_string()),
            ("service_name".to_string(), "shop/\"api\"".to_string()),
        ]);
        let r = RefusedProfile::new("p/default", SinkRefusal::TooManyLabels, &labels);
        assert_eq!(
            r.labels,
            r#"{__name__="memory", service_name="shop/\"api\""}"#
        );
        let many: crate::relabel::Labels = (0..500)
            .map(|i| (format!("label_{i}"), "é".repeat(10)))
            .collect();
        let r = RefusedProfile::new("p/default", SinkRefusal::TooManyLabels, &many);
        assert!(r.labels.len() <= MAX_REFUSED_LABELS, "{}", r.labels.len());
        assert!(r.labels.starts_with("{label_0=") && r.labels.ends_with("..."));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""reason":"too_many_labels""#), "{json}");
        let future: RefusedProfile =
            serde_json::from_str(r#"{"sink":"p/default","reason":"something_new","labels":"{}"}"#)
                .unwrap();
        assert_eq!(future.reason, SinkRefusal::Unknown);
    }

    #[test]
    fn object_names_are_valid_and_distinct() {
        assert_eq!(jobs_object_name(None), "kubeprof-jobs");
        assert_eq!(jobs_object_name(Some("node-a")), "kubeprof-jobs.node-a");
        assert_eq!(health_object_name(Some("node-a")), "kubeprof-health.node-a");
        let long_a = format!("{}a", "n".repeat(250));
        let long_b = format!("{}b", "n".repeat(250));
        let (a, b) = (
            jobs_object_name(Some(&long_a)),
            jobs_object_name(Some(&long_b)),
        );
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
        assert!(node_label_value(&long_a).is_none());
    }

    #[test]
    fn failure_reasons_round_trip_and_unknown_ones_are_read() {
        let all = [
            ScrapeFailure::Timeout,
            ScrapeFailure::Credential,
            ScrapeFailure::ValueCountMismatch,
            ScrapeFailure::BadId,
        ];
        for r in all {
            let json = serde_json::to_string(&r).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<ScrapeFailure>(&json).ok(), Some(r));
        }
        let newer: Result<ScrapeFailure, _> = serde_json::from_str("\"quantum_flux\"");
        assert_eq!(newer.ok(), Some(ScrapeFailure::Unknown));
    }

    #[test]
    fn an_ebpf_report_is_flat_and_versioned() {
        let r = EbpfReport {
            format_version: HEALTH_FORMAT_VERSION,
            node: Some("n1".into()),
            ebpf: EbpfHealth {
                running: false,
                reason: Some("permission_denied: EPERM".into()),
            },
        };
        assert_eq!(
            r.to_json(),
            r#"{"formatVersion":1,"node":"n1","running":false,"reason":"permission_denied: EPERM"}"#
        );
        assert_eq!(EbpfReport::from_json(&r.to_json()).ok(), Some(r));
        let newer = EbpfReport::from_json(r#"{"formatVersion":2,"running":true}"#);
        assert!(newer.is_err());
    }

    #[test]
    fn newer_reports_are_refused() {
        let mut r = HealthReport {
            format_version: HEALTH_FORMAT_VERSION,
            jobs: 3,
            ..Default::default()
        };
        assert_eq!(HealthReport::from_json(&r.to_json()).ok(), Some(r.clone()));
        r.format_version = 2;
        let e = HealthReport::from_json(&r.to_json())
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("format version 2"));
    }
}
