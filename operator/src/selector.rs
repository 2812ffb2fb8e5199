//! Kubernetes label selector matching (`matchLabels` AND `matchExpressions`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Why a selector cannot be evaluated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid label selector: operator {0:?} (use In, NotIn, Exists or DoesNotExist)")]
pub struct SelectorError(pub String);

fn requirement(
    r: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    Ok(match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        other => return Err(SelectorError(other.to_owned())),
    })
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything.
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for r in selector.match_expressions.iter().flatten() {
        if !requirement(r, labels)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
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

    fn outcome(sel: &LabelSelector, on: &BTreeMap<String, String>) -> Outcome {
        match matches(sel, on) {
            Ok(true) => Match,
            Ok(false) => NoMatch,
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
            // Today's evaluation is lazy and lenient: these rows change with kube's Selector.
            (
                "unknown operator after a failed matchLabels",
                sel(&[("app", "db")], vec![expr("app", "Matches", None)]),
                NoMatch,
            ),
            (
                "In without values",
                sel(&[], vec![expr("app", "In", None)]),
                NoMatch,
            ),
            (
                "In with an empty list",
                sel(&[], vec![expr("app", "In", Some(&[]))]),
                NoMatch,
            ),
            (
                "NotIn without values",
                sel(&[], vec![expr("app", "NotIn", None)]),
                Match,
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
    fn an_invalid_selector_says_which_operator() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expr("app", "Matches", None)]),
        };
        let e = matches(&sel, &labels(&[("app", "web")])).unwrap_err();
        assert!(e.to_string().contains("\"Matches\""), "{e}");
    }
}
