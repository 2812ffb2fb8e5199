//! The profile browser: file sinks -> services -> profile types -> a time line of stored
//! profiles -> a flame graph of one, of a range merged, or the difference of two ranges.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    UiState,
    html::{self, Html},
    store::{self, StoreError, Stored},
};
use crate::flamegraph::{self, Folded};

mod diff;
mod flame;

pub use diff::{diff_page, diff_svg};
pub use flame::{flame_page, flame_svg};

/// Most profiles merged into one flame graph (the newest of a longer range).
pub const MAX_MERGE: usize = 240;
/// Most compressed bytes read for one flame graph.
const MAX_MERGE_BYTES: u64 = 256 << 20;
/// Profiles per time line page.
const TIMELINE_PAGE: usize = 200;
/// Folded results kept for the page and its SVG, which ask for the same thing in a row.
const CACHED_FOLDS: usize = 8;

/// Which stored profiles: one (`at`) or a range (`from`..=`to`, Unix ms or RFC 3339).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Selection {
    /// The file sink.
    pub sink: String,
    /// `service_name`.
    pub service: String,
    /// The profile type.
    #[serde(rename = "type")]
    pub kind: String,
    /// One profile, by its time.
    pub at: Option<u64>,
    /// Range start.
    pub from: Option<String>,
    /// Range end.
    pub to: Option<String>,
    /// Sample type to draw (default: the profile's main one).
    pub sample_type: Option<String>,
    /// Search term passed to the flame graph.
    pub s: Option<String>,
}

/// Parses `1700000000000` (Unix ms) or an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Some(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix ms as RFC 3339 with milliseconds (what the forms show: a range typed back includes
/// exactly the profiles shown).
pub fn ms_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A page's failure: a status and a message for the user.
#[derive(Debug)]
pub struct PageError(StatusCode, String);

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(..) => Self(StatusCode::BAD_REQUEST, e.to_string()),
            StoreError::NotFound => Self(StatusCode::NOT_FOUND, e.to_string()),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        html::error_page(self.0, &self.1)
    }
}

impl PageError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
    fn missing(message: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, message.into())
    }
}

/// The file sinks in force: name -> directory.
fn file_sinks(state: &UiState) -> Vec<(String, PathBuf)> {
    state
        .snapshot()
        .map(|s| {
            s.jobs
                .sinks
                .iter()
                .filter_map(|sink| {
                    sink.file
                        .as_ref()
                        .map(|f| (sink.name.clone(), PathBuf::from(&f.directory)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The directory of the file sink `name`: only configured sinks, never a path from the URL.
fn sink_root(state: &UiState, name: &str) -> Result<PathBuf, PageError> {
    file_sinks(state)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, dir)| dir)
        .ok_or_else(|| PageError::missing(format!("no file sink is named {name:?}")))
}

/// The profiles a selection names, newest first: at most [`MAX_MERGE`] and
/// [`MAX_MERGE_BYTES`]; the flag tells whether the range held more.
pub fn select(root: &Path, sel: &Selection) -> Result<(Vec<Stored>, bool), PageError> {
    let all = store::list_profiles(root, &sel.service, &sel.kind)?;
    if let Some(at) = sel.at {
        let one = all
            .into_iter()
            .find(|p| p.ms == at)
            .ok_or_else(|| PageError::missing(format!("no profile at {}", ms_time(at))))?;
        return Ok((vec![one], false));
    }
    let bound = |v: &Option<String>, default: u64| -> Result<u64, PageError> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(default),
            Some(s) => parse_time(s).ok_or_else(|| {
                PageError::bad(format!(
                    "{s:?} is neither Unix milliseconds nor an RFC 3339 time"
                ))
            }),
        }
    };
    let from = bound(&sel.from, 0)?;
    let to = bound(&sel.to, u64::MAX)?;
    let mut chosen = Vec::new();
    let mut bytes = 0u64;
    let mut truncated = false;
    for p in all.into_iter().filter(|p| (from..=to).contains(&p.ms)) {
        if chosen.len() >= MAX_MERGE || bytes + p.bytes > MAX_MERGE_BYTES {
            truncated = true;
            break;
        }
        bytes += p.bytes;
        chosen.push(p);
    }
    if chosen.is_empty() {
        return Err(PageError::missing(format!(
            "no profile between {} and {}",
            ms_time(from),
            if to == u64::MAX {
                "now".into()
            } else {
                ms_time(to)
            }
        )));
    }
    Ok((chosen, truncated))
}

/// Profiles read for a flame graph.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Folded stacks of the chosen sample type.
    pub folded: Folded,
    /// Sample types of the newest profile.
    pub sample_types: Vec<String>,
    /// Profiles that could not be read or lack the sample type.
    pub skipped: usize,
}

/// Reads, decodes and folds `chosen` off the async workers, a few renders at a time; the
/// result is cached for the SVG request that follows the page.
pub async fn load(
    state: &UiState,
    root: &Path,
    sel: &Selection,
    chosen: &[Stored],
) -> Result<Arc<Loaded>, PageError> {
    let key = format!(
        "{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}",
        root.display(),
        sel.service,
        sel.kind,
        sel.sample_type,
        chosen.iter().map(|p| p.ms).collect::<Vec<_>>()
    );
    if let Some(hit) = state
        .inner
        .folds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| *k == key)
    {
        return Ok(hit.1.clone());
    }
    let _permit = state
        .inner
        .renders
        .acquire()
        .await
        .map_err(|_| PageError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let paths = chosen
        .iter()
        .map(|p| store::profile_path(root, &sel.service, &sel.kind, p.ms))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = state.inner.limits;
    let wanted = sel.sample_type.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        // Decoded one at a time and folded at once: a merge of hundreds of profiles holds one.
        let mut loaded = Loaded::default();
        let mut folded: Option<Folded> = None;
        for path in &paths {
            let Some(p) = std::fs::read(path)
                .ok()
                .and_then(|body| flamegraph::decode(&body, &limits).ok())
            else {
                loaded.skipped += 1;
                continue;
            };
            let sum = match &mut folded {
                Some(sum) => sum,
                None => {
                    // The newest readable profile decides the sample type.
                    loaded.sample_types = flamegraph::sample_types(&p);
                    if let Some(w) = &wanted
                        && !loaded.sample_types.contains(w)
                    {
                        return Err(PageError::bad(format!(
                            "no sample type {w:?}; the profile has: {}",
                            loaded.sample_types.join(", ")
                        )));
                    }
                    let sum = Folded::for_profile(&p, wanted.as_deref())
                        .map_err(|e| PageError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
                    folded.insert(sum)
                }
            };
            // Profiles of one folder share their sample types; one that does not is skipped.
            if sum.accepts(&p) {
                sum.add(&p)
                    .map_err(|e| PageError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
            } else {
                loaded.skipped += 1;
            }
        }
        loaded.folded = folded.unwrap_or_default();
        Ok(loaded)
    })
    .await
    .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    if loaded.folded.profiles == 0 {
        return Err(PageError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("none of the {} profiles could be read", chosen.len()),
        ));
    }
    let loaded = Arc::new(loaded);
    let mut cache = state.inner.folds.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= CACHED_FOLDS {
        cache.remove(0);
    }
    cache.push((key, loaded.clone()));
    Ok(loaded)
}

/// An SVG response (inferno's scripts and styles are inline in it).
pub fn svg_response(body: Vec<u8>) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn timeline_link(sink: &str, service: &str, kind: &str) -> String {
    html::query(
        "/ui/profiles",
        &[("sink", sink), ("service", service), ("type", kind)],
    )
}

/// `/ui/flame` (or `/ui/flame.svg`) of one profile.
pub fn flame_link(sink: &str, service: &str, kind: &str, at: u64) -> String {
    html::query(
        "/ui/flame",
        &[
            ("sink", sink),
            ("service", service),
            ("type", kind),
            ("at", &at.to_string()),
        ],
    )
}

/// `/ui/download` of one profile.
pub fn download_link(sink: &str, service: &str, kind: &str, at: u64) -> String {
    html::query(
        "/ui/download",
        &[
            ("sink", sink),
            ("service", service),
            ("type", kind),
            ("at", &at.to_string()),
        ],
    )
}

/// `GET /ui`: every file sink's services and profile types.
pub async fn index(State(state): State<UiState>) -> Response {
    let sinks = file_sinks(&state);
    let listed = tokio::task::spawn_blocking(move || {
        sinks
            .into_iter()
            .map(|(name, dir)| {
                let types: Vec<(store::TypeEntry, Option<Stored>, usize)> = store::list_types(&dir)
                    .into_iter()
                    .map(|t| {
                        let profiles =
                            store::list_profiles(&dir, &t.service, &t.kind).unwrap_or_default();
                        (t, profiles.first().copied(), profiles.len())
                    })
                    .collect();
                (name, dir, types)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut h = Html::default();
    h.raw("<p>Scrape health of every job: ")
        .link("/targets", "Targets")
        .raw(". Profiles stored by this scraper's file sinks:</p>");
    if listed.is_empty() {
        h.el(
            "p",
            "muted",
            "No file sink is configured: this browser reads the profiles a `file` sink writes (other sinks send them to Pyroscope, Parca or an OTLP collector).",
        );
    }
    let now = SystemTime::now();
    for (name, dir, types) in listed {
        h.raw("<h2>")
            .text(format!("{name} → {}", dir.display()))
            .raw("</h2>");
        if types.is_empty() {
            h.el(
                "p",
                "muted",
                "No profile stored yet: the first ones arrive one scrape interval after start.",
            );
            continue;
        }
        h.raw("<table class=\"services\"><thead><tr><th>service</th><th>profile type</th><th>profiles</th><th>newest</th><th></th></tr></thead><tbody>");
        for (t, newest, count) in types {
            h.raw("<tr class=\"service-type\"><td>")
                .text(&t.service)
                .raw("</td><td>")
                .link(&timeline_link(&name, &t.service, &t.kind), &t.kind)
                .raw("</td><td>")
                .text(count.to_string())
                .raw("</td><td>");
            if let Some(p) = newest {
                h.raw("<span title=\"")
                    .text(ms_time(p.ms))
                    .raw("\">")
                    .text(html::relative(p.time(), now))
                    .raw("</span></td><td>")
                    .link(
                        &flame_link(&name, &t.service, &t.kind, p.ms),
                        "newest flame graph",
                    );
            } else {
                h.raw("</td><td>");
            }
            h.raw("</td></tr>");
        }
        h.raw("</tbody></table>");
    }
    html::page("Profiles", "Profiles", h)
}

/// The query of the time line.
#[derive(Debug, Deserialize)]
pub struct TimelineQuery {
    sink: String,
    service: String,
    #[serde(rename = "type")]
    kind: String,
    page: Option<usize>,
}

/// `GET /ui/profiles`: the stored profiles of one service and type, newest first, with a
/// time strip, range and diff forms.
pub async fn timeline(
    State(state): State<UiState>,
    Query(q): Query<TimelineQuery>,
) -> Result<Response, PageError> {
    let root = sink_root(&state, &q.sink)?;
    let (service, kind) = (q.service.clone(), q.kind.clone());
    let all = tokio::task::spawn_blocking(move || store::list_profiles(&root, &service, &kind))
        .await
        .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let pages = all.len().div_ceil(TIMELINE_PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let shown: Vec<Stored> = all
        .iter()
        .skip((page - 1) * TIMELINE_PAGE)
        .take(TIMELINE_PAGE)
        .copied()
        .collect();
    let mut h = Html::default();
    h.raw("<p>")
        .link("/ui", "Profiles")
        .raw(" › ")
        .text(&q.sink)
        .raw(" › ")
        .text(&q.service)
        .raw(" › ")
        .text(&q.kind)
        .raw("</p>");
    h.el(
        "p",
        "",
        format!(
            "{} profiles stored; this page shows {} (newest first).",
            all.len(),
            shown.len()
        ),
    );
    if let (Some(newest), Some(oldest)) = (shown.first(), shown.last()) {
        strip(&mut h, &q, &shown, oldest.ms, newest.ms);
        let (newest_t, oldest_t) = (ms_time(newest.ms), ms_time(oldest.ms));
        // Default diff: the older half of this page (newest first) against the newer half.
        let split = (shown.len() / 2).max(1);
        let base_to = shown.get(split).map_or(oldest.ms, |p| p.ms);
        let new_from = shown[split - 1].ms;
        range_form(&mut h, &q, &oldest_t, &newest_t);
        diff_form(
            &mut h,
            &q,
            [&oldest_t, &ms_time(base_to), &ms_time(new_from), &newest_t],
        );
        h.raw("<table class=\"timeline\"><thead><tr><th>taken</th><th>size</th><th></th></tr></thead><tbody>");
        let now = SystemTime::now();
        for (i, p) in shown.iter().enumerate() {
            h.raw("<tr class=\"stored\"><td><span title=\"")
                .text(html::relative(p.time(), now))
                .raw("\">")
                .text(ms_time(p.ms))
                .raw("</span></td><td>")
                .text(format!("{} B", p.bytes))
                .raw("</td><td>")
                .link(
                    &flame_link(&q.sink, &q.service, &q.kind, p.ms),
                    "flame graph",
                )
                .raw(" · ")
                .link(
                    &download_link(&q.sink, &q.service, &q.kind, p.ms),
                    "download .pb.gz",
                );
            if let Some(prev) = shown.get(i + 1) {
                let (b, n) = (prev.ms.to_string(), p.ms.to_string());
                h.raw(" · ").link(
                    &html::query(
                        "/ui/diff",
                        &[
                            ("sink", &q.sink),
                            ("service", &q.service),
                            ("type", &q.kind),
                            ("base_from", &b),
                            ("base_to", &b),
                            ("from", &n),
                            ("to", &n),
                        ],
                    ),
                    "diff with previous",
                );
            }
            h.raw("</td></tr>");
        }
        h.raw("</tbody></table>");
    }
    if pages > 1 {
        h.raw("<p class=\"pager\">");
        let link = |n: usize| {
            html::query(
                "/ui/profiles",
                &[
                    ("sink", &q.sink),
                    ("service", &q.service),
                    ("type", &q.kind),
                    ("page", &n.to_string()),
                ],
            )
        };
        if page > 1 {
            h.link(&link(page - 1), "« newer").raw(" ");
        }
        h.text(format!("page {page} of {pages}"));
        if page < pages {
            h.raw(" ").link(&link(page + 1), "older »");
        }
        h.raw("</p>");
    }
    Ok(html::page(
        &format!("{} · {}", q.service, q.kind),
        "Profiles",
        h,
    ))
}

/// A strip of ticks, one per profile, each a link to its flame graph.
fn strip(h: &mut Html, q: &TimelineQuery, shown: &[Stored], oldest: u64, newest: u64) {
    const WIDTH: f64 = 1000.0;
    let span = (newest - oldest).max(1) as f64;
    h.raw("<svg class=\"strip\" viewBox=\"-5 0 1010 34\" preserveAspectRatio=\"none\" role=\"img\"><rect x=\"-5\" y=\"0\" width=\"1010\" height=\"34\" class=\"strip-bg\"/>");
    for p in shown {
        let x = (p.ms - oldest) as f64 / span * WIDTH;
        h.raw("<a href=\"")
            .text(flame_link(&q.sink, &q.service, &q.kind, p.ms))
            .raw("\"><rect class=\"tick\" y=\"4\" width=\"3\" height=\"26\" x=\"")
            .text(format!("{:.1}", x - 1.5))
            .raw("\"><title>")
            .text(ms_time(p.ms))
            .raw("</title></rect></a>");
    }
    h.raw("</svg><p class=\"muted strip-range\">")
        .text(format!("{} … {}", ms_time(oldest), ms_time(newest)))
        .raw("</p>");
}

fn hidden(h: &mut Html, name: &'static str, value: &str) {
    h.raw("<input type=\"hidden\" name=\"")
        .raw(name)
        .raw("\" value=\"")
        .text(value)
        .raw("\">");
}

fn input(h: &mut Html, label: &'static str, name: &'static str, value: &str) {
    h.raw("<label>")
        .raw(label)
        .raw(" <input name=\"")
        .raw(name)
        .raw("\" size=\"22\" value=\"")
        .text(value)
        .raw("\"></label> ");
}

fn range_form(h: &mut Html, q: &TimelineQuery, from: &str, to: &str) {
    h.raw("<form class=\"range\" method=\"get\" action=\"/ui/flame\"><b>Merged flame graph</b> ");
    hidden(h, "sink", &q.sink);
    hidden(h, "service", &q.service);
    hidden(h, "type", &q.kind);
    input(h, "from", "from", from);
    input(h, "to", "to", to);
    h.raw("<button>Show</button></form>");
}

fn diff_form(h: &mut Html, q: &TimelineQuery, [bf, bt, f, t]: [&str; 4]) {
    h.raw("<form class=\"diff\" method=\"get\" action=\"/ui/diff\"><b>Difference</b> ");
    hidden(h, "sink", &q.sink);
    hidden(h, "service", &q.service);
    hidden(h, "type", &q.kind);
    input(h, "base from", "base_from", bf);
    input(h, "to", "base_to", bt);
    input(h, "against from", "from", f);
    input(h, "to", "to", t);
    h.raw("<label><input type=\"checkbox\" name=\"normalize\" value=\"true\" checked> normalize</label> <button>Compare</button></form>");
}

/// `GET /ui/download`: one stored profile as it is on disk (gzip pprof, for `go tool pprof`).
pub async fn download(
    State(state): State<UiState>,
    Query(sel): Query<Selection>,
) -> Result<Response, PageError> {
    let root = sink_root(&state, &sel.sink)?;
    let at = sel
        .at
        .ok_or_else(|| PageError::bad("`at` (the profile's Unix ms) is required"))?;
    let path = store::profile_path(&root, &sel.service, &sel.kind, at)?;
    let body = tokio::fs::read(&path)
        .await
        .map_err(|_| PageError::missing("no such profile"))?;
    let name = format!("{}-{}-{at}.pb.gz", sel.service.replace('/', "_"), sel.kind);
    // `name` is made of checked components and digits only.
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_unix_ms_or_rfc3339() {
        assert_eq!(parse_time("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(
            parse_time(" 2023-11-14T22:13:20Z "),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(ms_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
    }
}
