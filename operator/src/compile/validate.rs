//! The API server's validation, redone on every object: an object that a server without CEL
//! (before 1.25) let through, or that was stored before the CRD bounded one of its lists, is
//! refused here as a CEL-enforcing server would have refused it. Nothing of a refused object is
//! applied (a policy governs no namespace, a target yields no job); its status says why.

use std::{collections::BTreeSet, sync::LazyLock};

use kubeprof_crds::{
    conditions, policy::ProfilingPolicySpec, target::ProfilingTargetSpec, validation::SpecValidator,
};

use super::Problem;

/// Compiled once: the CRDs' rules do not change while the operator runs.
static VALIDATOR: LazyLock<SpecValidator> = LazyLock::new(SpecValidator::new);

fn refusals(messages: Vec<String>) -> BTreeSet<Problem> {
    messages
        .into_iter()
        .map(|message| Problem {
            reason: conditions::REASON_INVALID_SPEC,
            message,
        })
        .collect()
}

/// Why a CEL-enforcing API server would refuse this ProfilingTarget (empty: it would not).
pub(super) fn target(spec: &ProfilingTargetSpec) -> BTreeSet<Problem> {
    refusals(VALIDATOR.target(spec))
}

/// Why a CEL-enforcing API server would refuse this ProfilingPolicy (empty: it would not).
pub(super) fn policy(spec: &ProfilingPolicySpec) -> BTreeSet<Problem> {
    refusals(VALIDATOR.policy(spec))
}
