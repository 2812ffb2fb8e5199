//! `/targets`: every job with its labels before and after relabelling and its health, and the
//! targets a relabel rule dropped, with that rule. Paginated; filtered by state and by a
//! substring of labels, address or job.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::SystemTime,
};

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use kubeprof_crds::{
    job::ScrapeJob,
    labels as pipeline,
    relabel::{CompiledRelabel, Labels, RelabelConfig, compile_all},
};
use serde::{Deserialize, Serialize};

use super::{
    SinkQueue, TargetHealth, TargetsSnapshot, UiState,
    html::{self, Html},
};
use crate::sources::JobSet;

/// Rows per page unless asked otherwise.
pub const DEFAULT_PER_PAGE: usize = 100;
/// Most rows per page.
pub const MAX_PER_PAGE: usize = 1000;

/// What relabelling made of one job (computed once per job set).
#[derive(Clone, Debug)]
struct DerivedJob {
    /// Final labels; `None` when dropped.
    after: Option<Labels>,
    /// Why it was dropped.
    dropped_by: Option<DropReason>,
    /// Lower-cased text searched by `q`.
    haystack: String,
}

/// The rule that dropped a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DropReason {
    /// Index of the rule in the job's `relabelings` (none when the rules do not compile).
    pub rule_index: Option<usize>,
    /// The rule as written (JSON), or the compile error.
    pub rule: String,
}

/// Relabelling results of a job set, kept while the set is the same `Arc`.
#[derive(Debug)]
pub struct Derived {
    set: Arc<JobSet>,
    jobs: Vec<DerivedJob>,
}

impl Derived {
    /// Relabels every job of `set` (rule lists shared by many jobs compile once).
    pub fn compute(set: Arc<JobSet>) -> Self {
        let mut compiled: HashMap<&[RelabelConfig], Result<Vec<CompiledRelabel>, String>> =
            HashMap::new();
        let jobs = set
            .jobs
            .iter()
            .map(|job| {
                let rules = compiled
                    .entry(job.relabelings.as_slice())
                    .or_insert_with(|| compile_all(&job.relabelings).map_err(|e| e.to_string()));
                derive(job, rules)
            })
            .collect();
        Self { set, jobs }
    }
}

fn derive(job: &ScrapeJob, rules: &Result<Vec<CompiledRelabel>, String>) -> DerivedJob {
    let (after, dropped_by) = match rules {
        Err(e) => (
            None,
            Some(DropReason {
                rule_index: None,
                rule: format!("invalid relabel rules: {e}"),
            }),
        ),
        // The same function the scrape loop uses decides; the rule is found only to explain.
        Ok(rules) => match pipeline::finalize(
            job.labels.clone(),
            &job.profile.name,
            rules,
            &job.external_labels,
        ) {
            Some(l) => (Some(l), None),
            None => (None, Some(dropping_rule(job, rules))),
        },
    };
    let mut haystack = format!("{} {} {}", job.origin.name, job.address, job.profile.name);
    for (k, v) in job.labels.iter().chain(after.iter().flatten()) {
        haystack.push(' ');
        haystack.push_str(k);
        haystack.push('=');
        haystack.push_str(v);
    }
    DerivedJob {
        after,
        dropped_by,
        haystack: haystack.to_lowercase(),
    }
}

/// The first rule after which the target is dropped.
fn dropping_rule(job: &ScrapeJob, rules: &[CompiledRelabel]) -> DropReason {
    let mut l = job.labels.clone();
    l.entry(kubeprof_crds::constants::labels::NAME.to_owned())
        .or_insert_with(|| job.profile.name.clone());
    for (i, rule) in rules.iter().enumerate() {
        if !rule.apply(&mut l) {
            return DropReason {
                rule_index: Some(i),
                rule: serde_json::to_string(rule.config()).unwrap_or_default(),
            };
        }
    }
    DropReason {
        rule_index: None,
        rule: "dropped".into(),
    }
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// The last scrape sent a profile.
    Up,
    /// The last scrape failed.
    Failing,
    /// The last scrape was a delta baseline: nothing sent yet.
    Baseline,
    /// Not scraped yet.
    Pending,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Failing => "failing",
            Self::Baseline => "baseline",
            Self::Pending => "pending",
        }
    }

    fn of(h: Option<&TargetHealth>) -> Self {
        match h {
            Some(h) if h.consecutive_failures > 0 => Self::Failing,
            Some(h) if h.last_scrape.is_some() && h.baseline => Self::Baseline,
            Some(h) if h.last_scrape.is_some() => Self::Up,
            _ => Self::Pending,
        }
    }
}

/// The query of `/targets`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TargetsQuery {
    /// Page of the active jobs, from 1.
    pub page: Option<usize>,
    /// Page of the dropped targets, from 1.
    pub dropped_page: Option<usize>,
    /// Rows per page (at most [`MAX_PER_PAGE`]).
    pub per_page: Option<usize>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs whose job name, address, type or labels contain this (case-insensitive).
    pub q: Option<String>,
}

/// A sink of a job, with its queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkRef {
    /// The sink's name.
    pub name: String,
    /// Its queue (none when no such sink exists).
    pub queue: Option<SinkQueue>,
}

/// One active job.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRow {
    /// Stable job id.
    pub id: String,
    /// `<kind>/<namespace>/<name>` of what declared it.
    pub origin: String,
    /// `host:port`.
    pub address: String,
    /// Profile type.
    pub profile: String,
    /// HTTP path.
    pub path: String,
    /// Scrape interval.
    pub interval: String,
    /// Labels before relabelling (discovery labels, `__*` included).
    pub labels_before: Labels,
    /// Labels sent with the profiles.
    pub labels_after: Labels,
    /// up, failing, baseline, pending.
    pub state: JobState,
    /// The failure's fixed reason.
    pub reason: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When the last scrape started (RFC 3339).
    pub last_scrape: Option<String>,
    /// Its duration in milliseconds.
    pub last_duration_ms: Option<u64>,
    /// When a scrape last succeeded (RFC 3339).
    pub last_success: Option<String>,
    /// When the next scrape is due (RFC 3339).
    pub next_scrape: Option<String>,
    /// Sinks, with their queues.
    pub sinks: Vec<SinkRef>,
    #[serde(skip)]
    times: RowTimes,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct RowTimes {
    last_scrape: Option<SystemTime>,
    next_scrape: Option<SystemTime>,
}

/// A target a relabel rule dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DroppedRow {
    /// Stable job id.
    pub id: String,
    /// What declared it.
    pub origin: String,
    /// `host:port`.
    pub address: String,
    /// Profile type.
    pub profile: String,
    /// Labels before relabelling.
    pub labels_before: Labels,
    /// The rule that dropped it.
    pub dropped_by: DropReason,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Paged<T> {
    /// Rows matching the filter.
    pub total: usize,
    /// This page, from 1.
    pub page: usize,
    /// Pages in all.
    pub pages: usize,
    /// Rows per page.
    pub per_page: usize,
    /// The rows of this page.
    pub items: Vec<T>,
}

/// The whole answer of `/targets`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetsPage {
    /// standalone or cluster, with details.
    pub mode: String,
    /// Jobs per state, over all active jobs (not only the filtered ones).
    pub summary: BTreeMap<JobState, usize>,
    /// Targets dropped by relabelling, in all.
    pub dropped_total: usize,
    /// Every sink and its queue.
    pub sinks: BTreeMap<String, SinkQueue>,
    /// Active jobs.
    pub active: Paged<TargetRow>,
    /// Dropped targets.
    pub dropped: Paged<DroppedRow>,
}

fn origin(job: &ScrapeJob) -> String {
    let o = &job.origin;
    if o.namespace.is_empty() {
        format!("{}/{}", o.kind.as_str(), o.name)
    } else {
        format!("{}/{}/{}", o.kind.as_str(), o.namespace, o.name)
    }
}

fn paged<T>(mut items: Vec<T>, page: Option<usize>, per_page: usize) -> Paged<T> {
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = page.unwrap_or(1).clamp(1, pages);
    let start = (page - 1) * per_page;
    let items: Vec<T> = if start < total {
        items.drain(start..(start + per_page).min(total)).collect()
    } else {
        Vec::new()
    };
    Paged {
        total,
        page,
        pages,
        per_page,
        items,
    }
}

/// The page `query` asks for. Active jobs are ordered failing first, then by origin, address
/// and type, so that what needs attention is on page 1.
pub fn build(snapshot: &TargetsSnapshot, derived: &Derived, query: &TargetsQuery) -> TargetsPage {
    let per_page = query
        .per_page
        .unwrap_or(DEFAULT_PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let needle = query.q.as_deref().unwrap_or("").trim().to_lowercase();
    let mut summary = BTreeMap::new();
    let mut active: Vec<(JobState, &ScrapeJob, &DerivedJob)> = Vec::new();
    let mut dropped = Vec::new();
    for (job, d) in snapshot.jobs.jobs.iter().zip(&derived.jobs) {
        let matches = needle.is_empty() || d.haystack.contains(&needle);
        if let Some(reason) = &d.dropped_by {
            if matches {
                dropped.push(DroppedRow {
                    id: job.id.clone(),
                    origin: origin(job),
                    address: job.address.clone(),
                    profile: job.profile.name.clone(),
                    labels_before: job.labels.clone(),
                    dropped_by: reason.clone(),
                });
            }
            continue;
        }
        let state = JobState::of(snapshot.health.get(&job.id));
        *summary.entry(state).or_insert(0) += 1;
        if matches && query.state.is_none_or(|s| s == state) {
            active.push((state, job, d));
        }
    }
    let dropped_total = derived
        .jobs
        .iter()
        .filter(|d| d.dropped_by.is_some())
        .count();
    active.sort_by(|a, b| {
        (
            a.0 != JobState::Failing,
            origin(a.1),
            &a.1.address,
            &a.1.profile.name,
        )
            .cmp(&(
                b.0 != JobState::Failing,
                origin(b.1),
                &b.1.address,
                &b.1.profile.name,
            ))
    });
    let active = paged(active, query.page, per_page);
    let items = active
        .items
        .into_iter()
        .map(|(state, job, d)| row(snapshot, state, job, d))
        .collect();
    TargetsPage {
        mode: snapshot.mode.clone(),
        summary,
        dropped_total,
        sinks: snapshot
            .jobs
            .sinks
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    snapshot.queues.get(&s.name).copied().unwrap_or_default(),
                )
            })
            .collect(),
        active: Paged {
            total: active.total,
            page: active.page,
            pages: active.pages,
            per_page: active.per_page,
            items,
        },
        dropped: paged(dropped, query.dropped_page, per_page),
    }
}

fn row(snapshot: &TargetsSnapshot, state: JobState, job: &ScrapeJob, d: &DerivedJob) -> TargetRow {
    let h = snapshot.health.get(&job.id).cloned().unwrap_or_default();
    let failing = state == JobState::Failing;
    TargetRow {
        id: job.id.clone(),
        origin: origin(job),
        address: job.address.clone(),
        profile: job.profile.name.clone(),
        path: job.profile.path.clone(),
        interval: job.interval.to_string(),
        labels_before: job.labels.clone(),
        labels_after: d.after.clone().unwrap_or_default(),
        state,
        reason: h
            .last_reason
            .filter(|_| failing)
            .map(|r| r.as_str().to_owned()),
        last_error: h.last_error.clone().filter(|_| failing),
        consecutive_failures: h.consecutive_failures,
        last_scrape: h.last_scrape.map(html::time),
        last_duration_ms: h
            .last_duration
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        last_success: h.last_success.map(html::time),
        next_scrape: h.next_scrape.map(html::time),
        sinks: job
            .sinks
            .iter()
            .map(|name| SinkRef {
                name: name.clone(),
                queue: snapshot.queues.get(name).copied().or_else(|| {
                    snapshot
                        .jobs
                        .sinks
                        .iter()
                        .any(|s| &s.name == name)
                        .then_some(SinkQueue::default())
                }),
            })
            .collect(),
        times: RowTimes {
            last_scrape: h.last_scrape,
            next_scrape: h.next_scrape,
        },
    }
}

/// `GET /targets`: HTML, or JSON when the client accepts `application/json` (and not HTML).
pub async fn handler(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(query): Query<TargetsQuery>,
) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
    let Some(snapshot) = state.snapshot() else {
        let message = "the scrape loop is starting";
        return if wants_json {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": message})),
            )
                .into_response()
        } else {
            html::error_page(StatusCode::SERVICE_UNAVAILABLE, message)
        };
    };
    let page = {
        let mut cache = state
            .inner
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !cache
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(&d.set, &snapshot.jobs))
        {
            *cache = Some(Derived::compute(snapshot.jobs.clone()));
        }
        match cache.as_ref() {
            Some(derived) => build(&snapshot, derived, &query),
            None => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    if wants_json {
        return Json(page).into_response();
    }
    render(&page, &query, SystemTime::now())
}

fn page_link(query: &TargetsQuery, page: Option<usize>, dropped_page: Option<usize>) -> String {
    let per_page = query.per_page.map(|n| n.to_string()).unwrap_or_default();
    let state = query.state.map(|s| s.as_str()).unwrap_or("");
    let page = page.map(|n| n.to_string()).unwrap_or_default();
    let dropped_page = dropped_page.map(|n| n.to_string()).unwrap_or_default();
    html::query(
        "/targets",
        &[
            ("state", state),
            ("q", query.q.as_deref().unwrap_or("")),
            ("per_page", &per_page),
            ("page", &page),
            ("dropped_page", &dropped_page),
        ],
    )
}

fn labels_cell(h: &mut Html, labels: &Labels) {
    h.raw("<div class=\"labels\">");
    for (k, v) in labels {
        h.raw("<span class=\"label\">")
            .text(k)
            .raw("=<b>")
            .text(v)
            .raw("</b></span> ");
    }
    h.raw("</div>");
}

fn pager<T>(h: &mut Html, p: &Paged<T>, link: impl Fn(usize) -> String) {
    if p.pages <= 1 {
        return;
    }
    h.raw("<p class=\"pager\">");
    if p.page > 1 {
        h.link(&link(p.page - 1), "« previous").raw(" ");
    }
    h.text(format!("page {} of {} ({} rows)", p.page, p.pages, p.total));
    if p.page < p.pages {
        h.raw(" ").link(&link(p.page + 1), "next »");
    }
    h.raw("</p>");
}

fn render(page: &TargetsPage, query: &TargetsQuery, now: SystemTime) -> Response {
    let mut h = Html::default();
    h.raw("<p class=\"mode\">").text(&page.mode).raw("</p>");
    h.raw("<p class=\"summary\">");
    let all_active: usize = page.summary.values().sum();
    h.link(
        &page_link(
            &TargetsQuery {
                state: None,
                ..query.clone()
            },
            None,
            None,
        ),
        format!("all {all_active}"),
    );
    for state in [
        JobState::Up,
        JobState::Failing,
        JobState::Baseline,
        JobState::Pending,
    ] {
        let n = page.summary.get(&state).copied().unwrap_or(0);
        h.raw(" · <span class=\"state-")
            .raw(state.as_str())
            .raw("\">");
        h.link(
            &page_link(
                &TargetsQuery {
                    state: Some(state),
                    ..query.clone()
                },
                None,
                None,
            ),
            format!("{} {n}", state.as_str()),
        );
        h.raw("</span>");
    }
    h.raw(" · ")
        .link("#dropped", format!("dropped {}", page.dropped_total));
    h.raw("</p>");
    h.raw("<form class=\"filter\" method=\"get\" action=\"/targets\"><input type=\"search\" name=\"q\" placeholder=\"filter: label, address, job\" value=\"")
        .text(query.q.as_deref().unwrap_or(""))
        .raw("\">");
    if let Some(s) = query.state {
        h.raw("<input type=\"hidden\" name=\"state\" value=\"")
            .raw(s.as_str())
            .raw("\">");
    }
    h.raw("<button>Filter</button></form>");

    h.raw("<h2>Sinks</h2><table class=\"sinks\"><tr><th>sink</th><th>queued profiles</th><th>queued bytes</th></tr>");
    for (name, q) in &page.sinks {
        h.raw("<tr><td>")
            .text(name)
            .raw("</td><td>")
            .text(q.profiles.to_string())
            .raw("</td><td>")
            .text(q.bytes.to_string())
            .raw("</td></tr>");
    }
    h.raw("</table>");

    h.raw("<h2>Active</h2>");
    let link = |n: usize| page_link(query, Some(n), Some(page.dropped.page));
    pager(&mut h, &page.active, link);
    h.raw("<table class=\"targets\"><thead><tr><th>target</th><th>state</th><th>last scrape</th><th>next</th><th>labels before relabelling</th><th>labels sent</th><th>sinks (queue)</th></tr></thead><tbody>");
    for r in &page.active.items {
        h.raw("<tr class=\"target state-")
            .raw(r.state.as_str())
            .raw("\" data-job-id=\"")
            .text(&r.id)
            .raw("\"><td>");
        h.el("div", "origin", &r.origin);
        h.el("div", "address", format!("{}{}", r.address, r.path));
        h.el(
            "div",
            "profile",
            format!("{} every {}", r.profile, r.interval),
        );
        h.raw("</td><td><span class=\"badge\">")
            .raw(r.state.as_str())
            .raw("</span>");
        if let Some(reason) = &r.reason {
            h.el("div", "reason", reason);
        }
        if let Some(e) = &r.last_error {
            h.el("div", "error", e);
        }
        if r.consecutive_failures > 1 {
            h.el(
                "div",
                "muted",
                format!("{} failures in a row", r.consecutive_failures),
            );
        }
        h.raw("</td><td>");
        match r.times.last_scrape {
            Some(t) => {
                h.raw("<span title=\"")
                    .text(html::time(t))
                    .raw("\">")
                    .text(html::relative(t, now))
                    .raw("</span>");
                if let Some(ms) = r.last_duration_ms {
                    h.el("div", "muted", format!("took {ms} ms"));
                }
            }
            None => {
                h.raw("never");
            }
        }
        h.raw("</td><td>");
        if let Some(t) = r.times.next_scrape {
            h.raw("<span title=\"")
                .text(html::time(t))
                .raw("\">")
                .text(html::relative(t, now))
                .raw("</span>");
        }
        h.raw("</td><td>");
        labels_cell(&mut h, &r.labels_before);
        h.raw("</td><td>");
        labels_cell(&mut h, &r.labels_after);
        h.raw("</td><td>");
        for s in &r.sinks {
            match &s.queue {
                Some(q) => h.el("div", "", format!("{} ({})", s.name, q.profiles)),
                None => h.el("div", "error", format!("{} (no such sink)", s.name)),
            };
        }
        if r.sinks.is_empty() {
            h.el("div", "error", "no sink: profiles are dropped");
        }
        h.raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    if page.active.items.is_empty() {
        h.el("p", "muted", "No job matches.");
    }

    h.raw("<h2 id=\"dropped\">Dropped by relabelling</h2>");
    let link = |n: usize| page_link(query, Some(page.active.page), Some(n));
    pager(&mut h, &page.dropped, link);
    h.raw("<table class=\"dropped\"><thead><tr><th>target</th><th>labels before relabelling</th><th>dropped by</th></tr></thead><tbody>");
    for r in &page.dropped.items {
        h.raw("<tr class=\"dropped-target\" data-job-id=\"")
            .text(&r.id)
            .raw("\"><td>");
        h.el("div", "origin", &r.origin);
        h.el("div", "address", &r.address);
        h.el("div", "profile", &r.profile);
        h.raw("</td><td>");
        labels_cell(&mut h, &r.labels_before);
        h.raw("</td><td>");
        if let Some(i) = r.dropped_by.rule_index {
            h.el("div", "", format!("relabelings[{i}]"));
        }
        h.el("code", "", &r.dropped_by.rule);
        h.raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    if page.dropped.items.is_empty() {
        h.el("p", "muted", "No target is dropped.");
    }
    h.raw(
        "<p class=\"muted\">As JSON: the same URL with <code>Accept: application/json</code>.</p>",
    );
    html::page("Targets", "Targets", h)
}

#[cfg(test)]
#[path = "targets_tests.rs"]
mod tests;
