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

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let pod = labels(&[("app", "web"), ("tier", "fe")]);
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        };
        assert!(matches(&LabelSelector::default(), &pod).unwrap());
        assert!(matches(&sel(&[("app", "web")], vec![]), &pod).unwrap());
        assert!(!matches(&sel(&[("app", "db")], vec![]), &pod).unwrap());
        assert!(matches(&sel(&[], vec![expr("tier", "In", &["fe", "be"])]), &pod).unwrap());
        assert!(!matches(&sel(&[], vec![expr("tier", "NotIn", &["fe"])]), &pod).unwrap());
        assert!(matches(&sel(&[], vec![expr("zone", "NotIn", &["a"])]), &pod).unwrap());
        assert!(matches(&sel(&[], vec![expr("app", "Exists", &[])]), &pod).unwrap());
        assert!(!matches(&sel(&[], vec![expr("app", "DoesNotExist", &[])]), &pod).unwrap());
        assert!(
            !matches(
                &sel(&[("app", "web")], vec![expr("zone", "Exists", &[])]),
                &pod
            )
            .unwrap()
        );
        assert_eq!(
            matches(&sel(&[], vec![expr("app", "Matches", &[])]), &pod),
            Err(SelectorError("Matches".into()))
        );
    }
}
