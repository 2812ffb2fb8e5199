//! Label selectors: kube's [`Selector`] matches, after the checks Kubernetes applies to the
//! selector of a Deployment, so that a mistake is reported with the expression that holds it.
//!
//! kube's conversion alone would do but for two things a user would notice: its errors do not
//! say which expression is wrong ("Invalid expression operator"; a `NotIn` without values is
//! reported as an `In`), and it tells `values: []` from no `values` (a `NotIn` with `[]` would
//! select everything, one without `values` would be refused).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Expression, ParseExpressionError, Selector};
use kubeprof_crds::packed::PackedMap;

/// Why a label selector cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum SelectorError {
    /// An operator Kubernetes does not define.
    #[error(
        "matchExpressions[{index}]: operator {operator:?} (key {key:?}) is not In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        index: usize,
        key: String,
        operator: String,
    },
    /// `In` or `NotIn` with nothing to compare with.
    #[error("matchExpressions[{index}]: {operator} (key {key:?}) needs at least one value")]
    NoValues {
        index: usize,
        key: String,
        operator: String,
    },
    /// kube refused what the checks above let through.
    #[error("{0}")]
    Parse(#[from] ParseExpressionError),
}

/// The selector to match with ([`kube::core::SelectorExt::matches`]), or why it is invalid,
/// whatever objects it would be matched against. An empty selector selects everything;
/// `matchLabels` and `matchExpressions` are ANDed; `Exists` and `DoesNotExist` ignore `values`.
pub(super) fn parse(selector: &LabelSelector) -> Result<Selector, SelectorError> {
    for (index, r) in selector.match_expressions.iter().flatten().enumerate() {
        match r.operator.as_str() {
            "In" | "NotIn" if r.values.as_ref().is_none_or(Vec::is_empty) => {
                return Err(SelectorError::NoValues {
                    index,
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                });
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => {
                return Err(SelectorError::UnknownOperator {
                    index,
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                });
            }
        }
    }
    Ok(Selector::try_from(selector.clone())?)
}

/// A parsed selector matched against a pod's labels as the operator holds them ([`PackedMap`];
/// kube's [`Selector`] reads only a `BTreeMap`). Same rules as kube's.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PodSelector(Vec<Expression>);

impl From<Selector> for PodSelector {
    fn from(s: Selector) -> Self {
        Self(s.into_iter().collect())
    }
}

impl PodSelector {
    /// Whether every expression holds for `labels`.
    pub(super) fn matches(&self, labels: &PackedMap) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => labels.contains_key(key),
            Expression::DoesNotExist(key) => !labels.contains_key(key),
            Expression::Equal(key, value) => labels.get(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => labels.get(key) != Some(value.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use kube::core::SelectorExt;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Outcome {
        Match,
        NoMatch,
        Invalid,
    }
    use Outcome::*;

    /// What kube's selector says, checked against [`PodSelector`] on the packed labels.
    fn outcome(sel: &LabelSelector, on: &BTreeMap<String, String>) -> Outcome {
        match parse(sel) {
            Ok(s) => {
                let packed = PodSelector::from(s.clone()).matches(&on.into());
                assert_eq!(packed, s.matches(on), "{sel:?} on {on:?}");
                if packed { Match } else { NoMatch }
            }
            Err(_) => Invalid,
        }
    }

    /// The semantics users rely on, one row per rule, against a pod labelled app=web, tier=fe.
    #[test]
    fn selector_semantics() {
        let pod = labels(&[("app", "web"), ("tier", "fe")]);
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        };
        let cases: Vec<(&str, LabelSelector, Outcome)> = vec![
            ("empty selects all", LabelSelector::default(), Match),
            (
                "empty parts select all",
                LabelSelector {
                    match_labels: Some(BTreeMap::new()),
                    match_expressions: Some(Vec::new()),
                },
                Match,
            ),
            ("matchLabels equal", sel(&[("app", "web")], vec![]), Match),
            (
                "matchLabels other value",
                sel(&[("app", "db")], vec![]),
                NoMatch,
            ),
            (
                "matchLabels missing key",
                sel(&[("zone", "a")], vec![]),
                NoMatch,
            ),
            (
                "matchLabels empty value",
                sel(&[("zone", "")], vec![]),
                NoMatch,
            ),
            (
                "matchLabels are ANDed",
                sel(&[("app", "web"), ("tier", "be")], vec![]),
                NoMatch,
            ),
            (
                "In, value listed",
                sel(&[], vec![expr("tier", "In", Some(&["fe", "be"]))]),
                Match,
            ),
            (
                "In, value not listed",
                sel(&[], vec![expr("tier", "In", Some(&["be"]))]),
                NoMatch,
            ),
            (
                "In, key missing",
                sel(&[], vec![expr("zone", "In", Some(&["a", ""]))]),
                NoMatch,
            ),
            (
                "NotIn, value listed",
                sel(&[], vec![expr("tier", "NotIn", Some(&["fe"]))]),
                NoMatch,
            ),
            (
                "NotIn, value not listed",
                sel(&[], vec![expr("tier", "NotIn", Some(&["be"]))]),
                Match,
            ),
            (
                "NotIn, key missing",
                sel(&[], vec![expr("zone", "NotIn", Some(&["a"]))]),
                Match,
            ),
            ("Exists", sel(&[], vec![expr("app", "Exists", None)]), Match),
            (
                "Exists, key missing",
                sel(&[], vec![expr("zone", "Exists", None)]),
                NoMatch,
            ),
            (
                "DoesNotExist",
                sel(&[], vec![expr("app", "DoesNotExist", None)]),
                NoMatch,
            ),
            (
                "DoesNotExist, key missing",
                sel(&[], vec![expr("zone", "DoesNotExist", None)]),
                Match,
            ),
            (
                "labels and expressions are ANDed",
                sel(&[("app", "web")], vec![expr("zone", "Exists", None)]),
                NoMatch,
            ),
            (
                "labels and expressions both hold",
                sel(
                    &[("app", "web")],
                    vec![
                        expr("tier", "In", Some(&["fe"])),
                        expr("zone", "DoesNotExist", None),
                    ],
                ),
                Match,
            ),
            (
                "unknown operator",
                sel(&[], vec![expr("app", "Matches", Some(&["web"]))]),
                Invalid,
            ),
            (
                "operators are case-sensitive",
                sel(&[], vec![expr("app", "in", Some(&["web"]))]),
                Invalid,
            ),
            (
                "Exists ignores values",
                sel(&[], vec![expr("app", "Exists", Some(&["db"]))]),
                Match,
            ),
            // An invalid selector is invalid whatever it is matched against (the old matcher
            // reported it only when an object got as far as the bad expression), and `In` or
            // `NotIn` without values is invalid, as Kubernetes has it (the old matcher selected
            // nothing with `In` and everything with `NotIn`).
            (
                "unknown operator after a failed matchLabels",
                sel(&[("app", "db")], vec![expr("app", "Matches", None)]),
                Invalid,
            ),
            (
                "In without values",
                sel(&[], vec![expr("app", "In", None)]),
                Invalid,
            ),
            (
                "In with an empty list",
                sel(&[], vec![expr("app", "In", Some(&[]))]),
                Invalid,
            ),
            (
                "NotIn without values",
                sel(&[], vec![expr("app", "NotIn", None)]),
                Invalid,
            ),
            (
                "NotIn with an empty list",
                sel(&[], vec![expr("app", "NotIn", Some(&[]))]),
                Invalid,
            ),
        ];
        for (name, selector, want) in cases {
            assert_eq!(outcome(&selector, &pod), want, "{name}");
        }
        // An unlabelled object: only selectors without requirements select it.
        assert_eq!(outcome(&LabelSelector::default(), &BTreeMap::new()), Match);
        assert_eq!(
            outcome(
                &sel(&[], vec![expr("a", "NotIn", Some(&["x"]))]),
                &BTreeMap::new()
            ),
            Match
        );
    }

    #[test]
    fn an_invalid_selector_says_which_expression_is_wrong() {
        let sel = |r| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expr("app", "Exists", None), r]),
        };
        let message = |r| parse(&sel(r)).map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            message(expr("tier", "Matches", Some(&["fe"]))),
            r#"matchExpressions[1]: operator "Matches" (key "tier") is not In, NotIn, Exists or DoesNotExist"#
        );
        assert_eq!(
            message(expr("tier", "NotIn", None)),
            r#"matchExpressions[1]: NotIn (key "tier") needs at least one value"#
        );
    }
}
