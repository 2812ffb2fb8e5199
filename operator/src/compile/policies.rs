//! Policies: which one governs each namespace, and the defaults and limits it puts in force.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Selector, SelectorExt};
use kubeprof_crds::{Duration, ResolvedProfile, conditions, job::sink_key, policy::PolicyDefaults};

use super::{
    NamespaceInfo, PolicyFacts, PolicyInput, Problem,
    jobs::{CompiledRules, compile_rules},
    selector,
};

/// The policy governing each namespace: the matching policy with the highest `priority`, ties
/// to the name that sorts first. Owns the (accepted) policies, so that an incremental compile
/// can keep it between passes.
#[derive(Debug, Default)]
pub(super) struct Governing {
    /// The accepted policies, in input order.
    policies: Vec<PolicyInput>,
    /// Index into `policies` of each governed namespace's policy.
    by_namespace: BTreeMap<String, usize>,
    /// Each policy's relabel rules, compiled once (not once per pod).
    rules: Vec<CompiledRules>,
}

impl Governing {
    /// Counts the namespaces each policy governs into `facts`, and reports invalid selectors.
    pub(super) fn of(
        policies: Vec<PolicyInput>,
        namespaces: &[NamespaceInfo],
        facts: &mut BTreeMap<String, PolicyFacts>,
    ) -> Self {
        let mut sorted: Vec<(usize, &PolicyInput)> = policies.iter().enumerate().collect();
        sorted.sort_by(|(_, a), (_, b)| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        // A policy whose selector is invalid governs nothing.
        let mut candidates: Vec<(usize, &PolicyInput, Selector)> = Vec::new();
        for (i, p) in sorted {
            match p.spec.namespace_selector.as_ref().map(selector::parse) {
                None => candidates.push((i, p, Selector::default())),
                Some(Ok(s)) => candidates.push((i, p, s)),
                Some(Err(e)) => {
                    facts
                        .entry(p.name.clone())
                        .or_default()
                        .problems
                        .insert(Problem {
                            reason: conditions::REASON_INVALID_SPEC,
                            message: format!("namespaceSelector: {e}"),
                        });
                }
            }
        }
        let mut by_namespace = BTreeMap::new();
        for ns in namespaces {
            if let Some((i, p, _)) = candidates.iter().find(|(_, _, s)| s.matches(&ns.labels)) {
                by_namespace.insert(ns.name.clone(), *i);
                facts.entry(p.name.clone()).or_default().matched_namespaces += 1;
            }
        }
        let rules = policies
            .iter()
            .map(|p| compile_rules(&[], Some(p)))
            .collect();
        Self {
            policies,
            by_namespace,
            rules,
        }
    }

    /// The accepted policies.
    pub(super) fn policies(&self) -> &[PolicyInput] {
        &self.policies
    }

    /// The policy governing `namespace`, if any.
    pub(super) fn policy(&self, namespace: &str) -> Option<&PolicyInput> {
        self.by_namespace
            .get(namespace)
            .and_then(|i| self.policies.get(*i))
    }

    /// The rules in force in `namespace`.
    pub(super) fn rules(&self, namespace: &str) -> Rules<'_> {
        let Some(&i) = self.by_namespace.get(namespace) else {
            return Rules::none();
        };
        match (self.policies.get(i), self.rules.get(i)) {
            (Some(policy), Some(relabel)) => Rules {
                policy: Some(policy),
                defaults: &policy.spec.defaults,
                relabel,
            },
            _ => Rules::none(),
        }
    }
}

/// The defaults where no policy governs.
static NO_DEFAULTS: std::sync::LazyLock<PolicyDefaults> =
    std::sync::LazyLock::new(PolicyDefaults::default);
static NO_RULES: CompiledRules = Ok(Vec::new());

/// Defaults and limits in force in one namespace.
#[derive(Clone, Debug)]
pub(super) struct Rules<'a> {
    pub(super) policy: Option<&'a PolicyInput>,
    pub(super) defaults: &'a PolicyDefaults,
    /// The policy's relabel rules, compiled.
    pub(super) relabel: &'a CompiledRules,
}

impl<'a> Rules<'a> {
    /// Where no policy governs.
    fn none() -> Self {
        Self {
            policy: None,
            defaults: &NO_DEFAULTS,
            relabel: &NO_RULES,
        }
    }

    /// The interval after the policy's minimum; a problem when it was raised.
    pub(super) fn interval(
        &self,
        wanted: Option<Duration>,
        problems: &mut BTreeSet<Problem>,
    ) -> Duration {
        let interval = wanted.unwrap_or(self.defaults.interval);
        match self.policy.and_then(|p| p.spec.limits.min_interval) {
            Some(min) if interval < min => {
                problems.insert(Problem {
                    reason: conditions::REASON_LIMIT_EXCEEDED,
                    message: format!(
                        "interval {interval} raised to the policy's minInterval {min}"
                    ),
                });
                min
            }
            _ => interval,
        }
    }

    /// Profiles the policy allows; a problem for each removed one.
    pub(super) fn allowed(
        &self,
        profiles: Vec<ResolvedProfile>,
        problems: &mut BTreeSet<Problem>,
    ) -> Vec<ResolvedProfile> {
        let Some(allowed) = self
            .policy
            .map(|p| &p.spec.limits.allowed_profile_types)
            .filter(|a| !a.is_empty())
        else {
            return profiles;
        };
        profiles
            .into_iter()
            .filter(|p| {
                let name: &str = match p.kind {
                    Some(k) => k.api_name(),
                    None => &p.name,
                };
                let ok = allowed.iter().any(|a| a == name || *a == p.name);
                if !ok {
                    problems.insert(Problem {
                        reason: conditions::REASON_LIMIT_EXCEEDED,
                        message: format!(
                            "profile type {name} is not allowed by policy {}",
                            self.policy.map_or("", |p| p.name.as_str())
                        ),
                    });
                }
                ok
            })
            .collect()
    }

    /// Keys ([`sink_key`]) of the governing policy's sinks a target wants (all of them when it
    /// names none); a problem for each name the policy does not define.
    pub(super) fn sinks(&self, wanted: &[String], problems: &mut BTreeSet<Problem>) -> Vec<String> {
        let Some(policy) = self.policy else {
            return Vec::new();
        };
        let defined = || policy.spec.sinks.iter().map(|s| s.name.as_str());
        if wanted.is_empty() {
            return defined().map(|n| sink_key(&policy.name, n)).collect();
        }
        wanted
            .iter()
            .filter(|w| {
                let ok = defined().any(|d| d == w.as_str());
                if !ok {
                    problems.insert(Problem {
                        reason: conditions::REASON_INVALID_SPEC,
                        message: format!("sink {w:?} is not defined by the governing policy"),
                    });
                }
                ok
            })
            .map(|w| sink_key(&policy.name, w))
            .collect()
    }
}
