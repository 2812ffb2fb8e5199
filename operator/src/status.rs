//! Status of the custom resources: what compile found, joined with the scrape health the
//! scrapers report. Pure functions; [`StatusWriter`] writes the result only when it differs.

mod writer;

pub(crate) use writer::{ObjectKey, Status, StatusWriter, UnreadableStatus};

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kubeprof_crds::{
    ProfilingPolicyStatus, ProfilingTargetStatus, conditions,
    health::{EbpfHealth, EbpfReport, FailingJob, HealthReport, RefusedProfile, ScrapeFailure},
};

use crate::compile::{PolicyFacts, Problem, TargetFacts};

/// Message of a Ready condition that is True. Conditions always carry a message: the API's
/// schema for `conditions[].message` refuses an empty one on some servers.
const READY_MESSAGE: &str = "jobs are published and scraping";

/// Longest condition message written (the API allows 32 KiB; a status should stay readable).
const MAX_MESSAGE: usize = 1024;

/// Nodes named in an `EbpfNotRunning` message; the others are counted.
const MAX_EBPF_NODES_NAMED: usize = 5;

/// Longest reason quoted per node in an `EbpfNotRunning` message.
const MAX_EBPF_REASON: usize = 160;

/// Scrape health from every scraper, joined.
#[derive(Clone, Debug, Default)]
pub struct HealthIndex {
    failing: HashMap<String, FailingJob>,
    refused: HashMap<String, RefusedProfile>,
    last_success: HashMap<String, i64>,
    /// The eBPF profiler's state, by node (only from scrapers that report one).
    ebpf: HashMap<String, EbpfHealth>,
}

impl HealthIndex {
    /// Joins the reports of all nodes.
    pub fn new<'a>(reports: impl IntoIterator<Item = &'a HealthReport>) -> Self {
        let mut index = Self::default();
        for r in reports {
            for (id, f) in &r.failing {
                index.failing.insert(id.clone(), f.clone());
            }
            for (id, refused) in &r.refused {
                index.refused.insert(id.clone(), refused.clone());
            }
            for (origin, t) in &r.last_success {
                let e = index.last_success.entry(origin.clone()).or_default();
                *e = (*e).max(*t);
            }
            if let (Some(node), Some(ebpf)) = (&r.node, &r.ebpf) {
                index.ebpf.insert(node.clone(), ebpf.clone());
            }
        }
        index
    }

    /// Takes each node's eBPF state from the eBPF DaemonSet's own reports (`ebpf.json`)
    /// instead of the scrapers' reports: with that DaemonSet deployed, the pull scrapers do
    /// not run the profiler, and a node whose profiler has not reported yet is not running.
    #[must_use]
    pub fn with_ebpf_reports<'a>(
        mut self,
        reports: impl IntoIterator<Item = &'a EbpfReport>,
    ) -> Self {
        self.ebpf = reports
            .into_iter()
            .filter_map(|r| Some((r.node.clone()?, r.ebpf.clone())))
            .collect();
        self
    }
}

/// Degradation reasons, most important first: the first one present names the condition.
const REASON_ORDER: [&str; 9] = [
    conditions::REASON_INVALID_SPEC,
    conditions::REASON_NO_POLICY,
    conditions::REASON_PORT_NOT_FOUND,
    conditions::REASON_SECRET_NOT_FOUND,
    conditions::REASON_SCRAPE_FAILING,
    conditions::REASON_PROFILES_REFUSED,
    conditions::REASON_EBPF_NOT_RUNNING,
    conditions::REASON_LIMIT_EXCEEDED,
    conditions::REASON_NO_MATCHING_PODS,
];

fn summarize(problems: &BTreeSet<Problem>) -> Option<(&'static str, String)> {
    let reason = REASON_ORDER
        .iter()
        .find(|r| problems.iter().any(|p| p.reason == **r))
        .copied()
        .or_else(|| problems.iter().next().map(|p| p.reason))?;
    let mut message = String::new();
    for p in problems
        .iter()
        .filter(|p| p.reason == reason)
        .chain(problems.iter().filter(|p| p.reason != reason))
    {
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(&p.message);
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" ...");
            break;
        }
    }
    Some((reason, message))
}

/// A condition, keeping the previous transition time when its status did not change.
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Ready and Degraded from a set of problems. Ready needs `working` (something is scraped).
fn conditions_for(
    problems: &BTreeSet<Problem>,
    working: bool,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let summary = summarize(problems);
    let (ready, ready_reason, ready_message) = match (&summary, working) {
        (None, true) => (
            true,
            conditions::REASON_RECONCILED,
            READY_MESSAGE.to_string(),
        ),
        // Limits applied (e.g. a raised interval) do not stop the target from working.
        (Some((reason, _)), true) if *reason == conditions::REASON_LIMIT_EXCEEDED => (
            true,
            conditions::REASON_RECONCILED,
            READY_MESSAGE.to_string(),
        ),
        (Some((reason, message)), _) => (false, *reason, message.clone()),
        (None, false) => (
            false,
            conditions::REASON_NO_MATCHING_PODS,
            "no scrape jobs".to_string(),
        ),
    };
    let degraded = match summary {
        Some((reason, message)) => condition(
            conditions::DEGRADED,
            true,
            reason,
            message,
            generation,
            previous,
            now,
        ),
        None => condition(
            conditions::DEGRADED,
            false,
            conditions::REASON_RECONCILED,
            "no problems found".to_string(),
            generation,
            previous,
            now,
        ),
    };
    vec![
        condition(
            conditions::READY,
            ready,
            ready_reason,
            ready_message,
            generation,
            previous,
            now,
        ),
        degraded,
    ]
}

/// The status a ProfilingTarget should have.
pub fn target_status(
    facts: &TargetFacts,
    origin_key: &str,
    health: &HealthIndex,
    generation: Option<i64>,
    previous: Option<&ProfilingTargetStatus>,
    now: Timestamp,
) -> ProfilingTargetStatus {
    let now = Time(now);
    let mut problems = facts.problems.clone();
    let mut failing = 0;
    let mut first: Option<&FailingJob> = None;
    let mut credential = false;
    for id in &facts.job_ids {
        if let Some(f) = health.failing.get(id) {
            failing += 1;
            first.get_or_insert(f);
            credential |= f.reason == ScrapeFailure::Credential;
        }
    }
    if let Some(f) = first {
        problems.insert(Problem {
            reason: if credential {
                conditions::REASON_SECRET_NOT_FOUND
            } else {
                conditions::REASON_SCRAPE_FAILING
            },
            message: format!(
                "{failing} of {} jobs failing: {}",
                facts.job_ids.len(),
                f.message
            ),
        });
    }
    // Scraped, but a sink refused what it would send: the profiles go nowhere, so the
    // target is not Ready, and the message names the limit and the labels to fix.
    let mut refused = 0;
    let mut first_refused: Option<&RefusedProfile> = None;
    for id in &facts.job_ids {
        if let Some(r) = health.refused.get(id) {
            refused += 1;
            first_refused.get_or_insert(r);
        }
    }
    if let Some(r) = first_refused {
        problems.insert(Problem {
            reason: conditions::REASON_PROFILES_REFUSED,
            message: format!(
                "sink {} refuses the profiles of {refused} of {} jobs ({}), labels {}",
                r.sink,
                facts.job_ids.len(),
                r.reason,
                r.labels
            ),
        });
    }
    let last_error = first.map(|f| f.message.clone());
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    ProfilingTargetStatus {
        observed_generation: generation,
        conditions: conditions_for(
            &problems,
            facts.active_jobs > 0 && failing == 0 && refused == 0,
            generation,
            previous_conditions,
            &now,
        ),
        matched_pods: facts.matched_pods,
        sampled_pods: facts.sampled_pods,
        active_jobs: facts.active_jobs,
        failing_jobs: failing,
        last_scrape_time: health
            .last_success
            .get(origin_key)
            .and_then(|t| Timestamp::from_second(*t).ok())
            .map(Time),
        last_error,
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &s[..end])
}

/// How many of the policy's eBPF nodes run the profiler, and the problem naming those whose
/// scraper reports that it cannot (nodes not reported on yet are not running, but no problem).
fn ebpf_health(facts: &PolicyFacts, health: &HealthIndex) -> (i32, Option<Problem>) {
    let mut running = 0;
    let mut failing: Vec<(&str, &str)> = Vec::new();
    for node in &facts.ebpf_nodes {
        match health.ebpf.get(node) {
            Some(h) if h.running => running += 1,
            Some(h) => failing.push((node, h.reason.as_deref().unwrap_or("no reason given"))),
            None => {}
        }
    }
    let problem = (!failing.is_empty()).then(|| {
        let mut message = format!(
            "the eBPF profiler does not run on {} of {} nodes: ",
            failing.len(),
            facts.ebpf_nodes.len()
        );
        let named: Vec<String> = failing
            .iter()
            .take(MAX_EBPF_NODES_NAMED)
            .map(|(node, reason)| format!("{node}: {}", cut(reason, MAX_EBPF_REASON)))
            .collect();
        message.push_str(&named.join("; "));
        if failing.len() > MAX_EBPF_NODES_NAMED {
            message.push_str(&format!(
                "; and {} more",
                failing.len() - MAX_EBPF_NODES_NAMED
            ));
        }
        Problem {
            reason: conditions::REASON_EBPF_NOT_RUNNING,
            message,
        }
    });
    (running, problem)
}

/// The status a ProfilingPolicy should have.
pub fn policy_status(
    facts: &PolicyFacts,
    health: &HealthIndex,
    generation: Option<i64>,
    previous: Option<&ProfilingPolicyStatus>,
    now: Timestamp,
) -> ProfilingPolicyStatus {
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let (ebpf_running, ebpf_problem) = ebpf_health(facts, health);
    let mut problems = facts.problems.clone();
    problems.extend(ebpf_problem);
    let mut conds = conditions_for(&problems, true, generation, previous_conditions, &Time(now));
    // A policy is Ready when it is valid; governing no namespace yet is not an error.
    if let Some(ready) = conds.iter_mut().find(|c| c.type_ == conditions::READY)
        && facts
            .problems
            .iter()
            .all(|p| p.reason != conditions::REASON_INVALID_SPEC)
        && ready.status == "False"
    {
        *ready = condition(
            conditions::READY,
            true,
            conditions::REASON_RECONCILED,
            READY_MESSAGE.to_string(),
            generation,
            previous_conditions,
            &Time(now),
        );
    }
    ProfilingPolicyStatus {
        observed_generation: generation,
        conditions: conds,
        matched_namespaces: facts.matched_namespaces,
        targets: facts.targets,
        annotated_pods: facts.annotated_pods,
        sampled_pods: facts.sampled_pods,
        ebpf_nodes: i32::try_from(facts.ebpf_nodes.len()).unwrap_or(i32::MAX),
        ebpf_running_nodes: ebpf_running,
    }
}

/// The status of an object that could not be read at all (a `DeserializeGuard` error).
pub fn invalid_conditions(
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let problems = BTreeSet::from([Problem {
        reason: conditions::REASON_INVALID_SPEC,
        message: format!("the object cannot be read: {message}"),
    }]);
    conditions_for(&problems, false, generation, &[], &Time(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn facts(jobs: &[&str]) -> TargetFacts {
        TargetFacts {
            matched_pods: 1,
            sampled_pods: 1,
            active_jobs: i32::try_from(jobs.len()).unwrap_or(0),
            problems: BTreeSet::new(),
            job_ids: jobs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn cond<'a>(s: &'a ProfilingTargetStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t}"))
    }

    #[test]
    fn healthy_target_is_ready_and_keeps_its_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let f = facts(&["a", "b"]);
        let s0 = target_status(&f, "k", &HealthIndex::default(), Some(3), None, t0);
        assert_eq!(cond(&s0, "Ready").status, "True");
        assert_eq!(cond(&s0, "Degraded").status, "False");
        assert_eq!(
            (s0.matched_pods, s0.active_jobs, s0.failing_jobs),
            (1, 2, 0)
        );
        let s1 = target_status(&f, "k", &HealthIndex::default(), Some(3), Some(&s0), t1);
        assert_eq!(s0, s1, "nothing changed, nothing to write");
    }

    #[test]
    fn failing_jobs_degrade_the_target_and_count() {
        let report = HealthReport {
            format_version: 1,
            failing: BTreeMap::from([(
                "b".to_string(),
                FailingJob {
                    reason: ScrapeFailure::Connect,
                    message: "connection refused".into(),
                    consecutive_failures: 2,
                },
            )]),
            last_success: BTreeMap::from([("k".to_string(), 1_700_000_000)]),
            ..Default::default()
        };
        let index = HealthIndex::new([&report]);
        let s = target_status(
            &facts(&["a", "b"]),
            "k",
            &index,
            Some(1),
            None,
            Timestamp::now(),
        );
        assert_eq!(s.failing_jobs, 1);
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Degraded").reason,
            conditions::REASON_SCRAPE_FAILING
        );
        assert!(
            cond(&s, "Degraded")
                .message
                .contains("1 of 2 jobs failing: connection refused")
        );
        assert_eq!(s.last_error.as_deref(), Some("connection refused"));
        assert!(s.last_scrape_time.is_some());
    }

    #[test]
    fn profiles_a_sink_refuses_degrade_the_target_with_the_labels_to_fix() {
        let labels = kubeprof_crds::relabel::Labels::from([
            ("__name__".to_string(), "memory".to_string()),
            ("team".to_string(), "x".repeat(3000)),
        ]);
        let report = HealthReport {
            format_version: 1,
            refused: BTreeMap::from([(
                "b".to_string(),
                RefusedProfile::new(
                    "ops/pyroscope",
                    kubeprof_crds::health::SinkRefusal::LabelValueTooLong,
                    &labels,
                ),
            )]),
            ..Default::default()
        };
        let index = HealthIndex::new([&report]);
        let s = target_status(
            &facts(&["a", "b"]),
            "k",
            &index,
            Some(1),
            None,
            Timestamp::now(),
        );
        assert_eq!(s.failing_jobs, 0, "the scrapes themselves work");
        assert_eq!(cond(&s, "Ready").status, "False");
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.reason, conditions::REASON_PROFILES_REFUSED);
        assert!(
            degraded.message.starts_with(
                "sink ops/pyroscope refuses the profiles of 1 of 2 jobs (label_value_too_long), labels {__name__=\"memory\", team=\"xxx"
            ),
            "{}",
            degraded.message
        );
        assert!(
            degraded.message.len() <= MAX_MESSAGE + 4,
            "{}",
            degraded.message.len()
        );
        // Once the sink sends that job's profiles again, the report drops it and Ready returns.
        let s = target_status(
            &facts(&["a", "b"]),
            "k",
            &HealthIndex::new([&HealthReport::default()]),
            Some(1),
            Some(&s),
            Timestamp::now(),
        );
        assert_eq!(cond(&s, "Ready").status, "True");
    }

    #[test]
    fn port_not_found_wins_over_no_matching_pods() {
        let mut f = facts(&[]);
        f.problems.insert(Problem {
            reason: conditions::REASON_NO_MATCHING_PODS,
            message: "none".into(),
        });
        f.problems.insert(Problem {
            reason: conditions::REASON_PORT_NOT_FOUND,
            message: "port pprof not declared by pod shop/web-1".into(),
        });
        let s = target_status(
            &f,
            "k",
            &HealthIndex::default(),
            None,
            None,
            Timestamp::now(),
        );
        assert_eq!(
            cond(&s, "Degraded").reason,
            conditions::REASON_PORT_NOT_FOUND
        );
        assert_eq!(cond(&s, "Ready").reason, conditions::REASON_PORT_NOT_FOUND);
    }

    fn ebpf_report(node: &str, ebpf: Option<EbpfHealth>) -> HealthReport {
        HealthReport {
            format_version: 1,
            node: Some(node.into()),
            ebpf,
            ..Default::default()
        }
    }

    fn policy_cond<'a>(s: &'a ProfilingPolicyStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t}"))
    }

    #[test]
    fn policy_status_counts_ebpf_nodes_and_names_those_that_cannot_run_it() {
        let facts = PolicyFacts {
            ebpf_nodes: ["a", "b", "c", "d", "e"]
                .iter()
                .map(|n| n.to_string())
                .collect(),
            ..Default::default()
        };
        let running = |r: bool, reason: Option<&str>| {
            Some(EbpfHealth {
                running: r,
                reason: reason.map(String::from),
            })
        };
        let reports = [
            ebpf_report("a", running(true, None)),
            ebpf_report("b", running(false, Some("kernel_too_old: 4.19 < 5.8"))),
            // c: no report yet; d: a scraper that says nothing of eBPF.
            ebpf_report("d", None),
            ebpf_report("e", running(true, None)),
            // Not one of the policy's nodes.
            ebpf_report("x", running(false, Some("no_privilege"))),
        ];
        let health = HealthIndex::new(&reports);
        let s = policy_status(&facts, &health, Some(2), None, Timestamp::now());
        assert_eq!((s.ebpf_nodes, s.ebpf_running_nodes), (5, 2));
        let degraded = policy_cond(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", conditions::REASON_EBPF_NOT_RUNNING)
        );
        assert_eq!(
            degraded.message,
            "the eBPF profiler does not run on 1 of 5 nodes: b: kernel_too_old: 4.19 < 5.8"
        );
        // The policy itself is fine: it stays Ready.
        assert_eq!(policy_cond(&s, "Ready").status, "True");

        // All running (or not reported yet): no condition.
        let healthy = HealthIndex::new(&reports[..1]);
        let s = policy_status(&facts, &healthy, Some(2), None, Timestamp::now());
        assert_eq!((s.ebpf_nodes, s.ebpf_running_nodes), (5, 1));
        assert_eq!(policy_cond(&s, "Degraded").status, "False");
    }

    #[test]
    fn with_the_ebpf_daemonset_its_own_reports_are_each_nodes_ebpf_state() {
        let facts = PolicyFacts {
            ebpf_nodes: ["a", "b", "c"].iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        let state = |running: bool, reason: Option<&str>| EbpfHealth {
            running,
            reason: reason.map(String::from),
        };
        // The pull scrapers say nothing of eBPF (or, on an older scraper, that it cannot run).
        let scrapers = [
            ebpf_report("a", None),
            ebpf_report("b", Some(state(false, Some("permission_denied: EPERM")))),
            ebpf_report("c", None),
        ];
        let profilers = [
            EbpfReport {
                format_version: 1,
                node: Some("a".into()),
                ebpf: state(true, None),
            },
            EbpfReport {
                format_version: 1,
                node: Some("b".into()),
                ebpf: state(true, None),
            },
        ];
        let health = HealthIndex::new(&scrapers).with_ebpf_reports(&profilers);
        let s = policy_status(&facts, &health, Some(1), None, Timestamp::now());
        // c has not reported yet: not running, without a condition.
        assert_eq!((s.ebpf_nodes, s.ebpf_running_nodes), (3, 2));
        assert_eq!(policy_cond(&s, "Degraded").status, "False");
    }

    #[test]
    fn an_ebpf_message_names_a_few_nodes_and_counts_the_rest() {
        let nodes: Vec<String> = (0..40).map(|i| format!("node-{i:02}")).collect();
        let facts = PolicyFacts {
            ebpf_nodes: nodes.iter().cloned().collect(),
            ..Default::default()
        };
        let reports: Vec<HealthReport> = nodes
            .iter()
            .map(|n| {
                ebpf_report(
                    n,
                    Some(EbpfHealth {
                        running: false,
                        reason: Some(format!("btf_missing: {}", "x".repeat(5000))),
                    }),
                )
            })
            .collect();
        let s = policy_status(
            &facts,
            &HealthIndex::new(&reports),
            None,
            None,
            Timestamp::now(),
        );
        assert_eq!(s.ebpf_running_nodes, 0);
        let message = &policy_cond(&s, "Degraded").message;
        assert!(message.len() <= MAX_MESSAGE + 4, "{}", message.len());
        assert!(message.starts_with(
            "the eBPF profiler does not run on 40 of 40 nodes: node-00: btf_missing: x"
        ));
        assert!(message.ends_with("; and 35 more"), "{message}");
    }

    #[test]
    fn long_messages_are_cut() {
        let mut f = facts(&[]);
        for i in 0..500 {
            f.problems.insert(Problem {
                reason: conditions::REASON_PORT_NOT_FOUND,
                message: format!("pod shop/web-{i} declares no port pprof"),
            });
        }
        let s = target_status(
            &f,
            "k",
            &HealthIndex::default(),
            None,
            None,
            Timestamp::now(),
        );
        assert!(cond(&s, "Degraded").message.len() <= MAX_MESSAGE + 4);
    }
}
