//! Renders a stored profile as a flame graph SVG (`kubeprof-scraper flamegraph FILE`).

use std::collections::BTreeMap;

use kubeprof_pprof::{self as pprof, DecodeLimits, Profile, string};

/// Why a profile could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    /// Not a readable profile.
    #[error("not a pprof profile: {0}")]
    Decode(#[from] pprof::DecodeError),
    /// A profile with broken references.
    #[error("invalid profile: {0}")]
    Invalid(#[from] pprof::ValidateError),
    /// The sample type asked for does not exist.
    #[error("no sample type {wanted:?}; the profile has: {available}")]
    NoSuchSampleType {
        /// Asked for.
        wanted: String,
        /// What exists.
        available: String,
    },
    /// Nothing to draw.
    #[error("the profile has no samples of type {0}")]
    Empty(String),
    /// Writing the SVG failed.
    #[error("cannot render: {0}")]
    Render(#[from] std::io::Error),
}

/// The default sample type: what `go tool pprof` shows first for the usual Go profiles.
fn default_index(p: &Profile) -> usize {
    let names: Vec<&str> = p
        .sample_type
        .iter()
        .map(|vt| string(p, vt.r#type))
        .collect();
    for preferred in ["cpu", "inuse_space", "delay", "goroutine"] {
        if let Some(i) = names.iter().position(|n| *n == preferred) {
            return i;
        }
    }
    names.len().saturating_sub(1)
}

/// Folded stacks (`root;...;leaf value`, one per line) of `sample_type` (default: see above).
pub fn fold(
    p: &Profile,
    sample_type: Option<&str>,
) -> Result<(String, Vec<String>), FlamegraphError> {
    let index = match sample_type {
        None => default_index(p),
        Some(wanted) => p
            .sample_type
            .iter()
            .position(|vt| string(p, vt.r#type) == wanted)
            .ok_or_else(|| FlamegraphError::NoSuchSampleType {
                wanted: wanted.to_owned(),
                available: p
                    .sample_type
                    .iter()
                    .map(|vt| string(p, vt.r#type))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
    };
    let vt = &p.sample_type[index];
    let title = format!("{} ({})", string(p, vt.r#type), string(p, vt.unit));
    let functions: BTreeMap<u64, &str> = p
        .function
        .iter()
        .map(|f| (f.id, string(p, f.name)))
        .collect();
    let locations: BTreeMap<u64, Vec<&str>> = p
        .location
        .iter()
        .map(|l| {
            // Lines are leaf-first (inlined callee first).
            let names = l
                .line
                .iter()
                .map(|line| functions.get(&line.function_id).copied().unwrap_or("?"))
                .collect();
            (l.id, names)
        })
        .collect();
    let mut folded: BTreeMap<String, i64> = BTreeMap::new();
    for s in &p.sample {
        let value = s.value.get(index).copied().unwrap_or(0);
        if value <= 0 {
            continue;
        }
        let mut frames: Vec<&str> = Vec::new();
        for id in s.location_id.iter().rev() {
            if let Some(names) = locations.get(id) {
                frames.extend(names.iter().rev());
            }
        }
        let stack = frames
            .iter()
            .map(|f| f.replace(';', ":"))
            .collect::<Vec<_>>()
            .join(";");
        *folded
            .entry(if stack.is_empty() {
                "[unknown]".into()
            } else {
                stack
            })
            .or_default() += value;
    }
    if folded.is_empty() {
        return Err(FlamegraphError::Empty(title));
    }
    Ok((
        title,
        folded
            .into_iter()
            .map(|(s, v)| format!("{s} {v}"))
            .collect(),
    ))
}

/// Renders the profile in `body` (gzip or raw pprof) as an SVG into `out`.
pub fn render(
    body: &[u8],
    sample_type: Option<&str>,
    out: impl std::io::Write,
) -> Result<(), FlamegraphError> {
    let profile = pprof::decode(body, &DecodeLimits::default())?;
    pprof::validate(&profile)?;
    let (title, lines) = fold(&profile, sample_type)?;
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.clone();
    options.count_name = title;
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| FlamegraphError::Render(std::io::Error::other(e.to_string())))
}
