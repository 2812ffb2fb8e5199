//! The relabel table: every action, and the edge cases Prometheus documents and tests.
use super::*;
use pretty_assertions::assert_eq;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rule(action: RelabelAction) -> RelabelConfig {
    RelabelConfig {
        action,
        ..Default::default()
    }
}

struct Case {
    name: &'static str,
    input: Labels,
    rules: Vec<RelabelConfig>,
    /// `None`: the target is dropped.
    output: Option<Labels>,
}

fn run(case: &Case) {
    let compiled = compile_all(&case.rules).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut got = case.input.clone();
    let kept = relabel(&mut got, &compiled);
    let got = kept.then_some(got);
    assert_eq!(got, case.output, "case {:?}", case.name);
}

fn cases() -> Vec<Case> {
    let abc = labels(&[("a", "foo"), ("b", "bar"), ("c", "baz")]);
    vec![
        Case {
            name: "replace with a capture group",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "f(.*)".into(),
                target_label: Some("d".into()),
                replacement: "ch${1}-ch${1}".into(),
                ..Default::default()
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("d", "choo-choo"),
            ])),
        },
        Case {
            name: "replace joins several sources with the separator",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into(), "b".into()],
                regex: "f(.*);(.*)r".into(),
                target_label: Some("a".into()),
                replacement: "b${1}${2}m".into(),
                ..Default::default()
            }],
            output: Some(labels(&[("a", "boobam"), ("b", "bar"), ("c", "baz")])),
        },
        Case {
            name: "regex is fully anchored: a partial match does nothing",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "o".into(),
                target_label: Some("d".into()),
                replacement: "x".into(),
                ..Default::default()
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "replace with a non-matching regex leaves labels alone",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "no-match".into(),
                target_label: Some("a".into()),
                replacement: "x".into(),
                ..Default::default()
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "empty source value with default regex and replacement deletes the target",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["missing".into()],
                target_label: Some("a".into()),
                ..Default::default()
            }],
            output: Some(labels(&[("b", "bar"), ("c", "baz")])),
        },
        Case {
            name: "empty source value can still set a literal replacement",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["missing".into()],
                regex: "".into(),
                target_label: Some("d".into()),
                replacement: "was-empty".into(),
                ..Default::default()
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("d", "was-empty"),
            ])),
        },
        Case {
            name: "$1x names group 1x, which does not exist, so it expands to nothing",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "(f)oo".into(),
                target_label: Some("d".into()),
                replacement: "$1x-${1}x".into(),
                ..Default::default()
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("d", "-fx"),
            ])),
        },
        Case {
            name: "named groups and $$ escapes",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["c".into()],
                regex: "(?P<first>b)(?P<rest>.*)".into(),
                target_label: Some("d".into()),
                replacement: "$rest$$${first}".into(),
                ..Default::default()
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("d", "az$b"),
            ])),
        },
        Case {
            name: "target label built from a capture",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "(f)oo".into(),
                target_label: Some("label_${1}".into()),
                replacement: "set".into(),
                ..Default::default()
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("label_f", "set"),
            ])),
        },
        Case {
            name: "an invalid expanded target name is skipped",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "(.*)".into(),
                target_label: Some("${1}-bad".into()),
                replacement: "set".into(),
                ..Default::default()
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "regex matches across newlines (?s)",
            input: labels(&[("a", "line1\nline2")]),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "line1.line2".into(),
                target_label: Some("b".into()),
                replacement: "multi".into(),
                ..Default::default()
            }],
            output: Some(labels(&[("a", "line1\nline2"), ("b", "multi")])),
        },
        Case {
            name: "keep keeps a match",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "f.*".into(),
                ..rule(RelabelAction::Keep)
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "keep drops a non-match",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "f".into(),
                ..rule(RelabelAction::Keep)
            }],
            output: None,
        },
        Case {
            name: "keep on a missing label matches the empty string",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["missing".into()],
                regex: "".into(),
                ..rule(RelabelAction::Keep)
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "drop drops a match",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: ".*o.*".into(),
                ..rule(RelabelAction::Drop)
            }],
            output: None,
        },
        Case {
            name: "drop keeps a non-match",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                regex: "bar".into(),
                ..rule(RelabelAction::Drop)
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "keepequal keeps equal values",
            input: labels(&[("a", "foo"), ("b", "foo")]),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                target_label: Some("b".into()),
                ..rule(RelabelAction::KeepEqual)
            }],
            output: Some(labels(&[("a", "foo"), ("b", "foo")])),
        },
        Case {
            name: "keepequal drops different values",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                target_label: Some("b".into()),
                ..rule(RelabelAction::KeepEqual)
            }],
            output: None,
        },
        Case {
            name: "dropequal drops equal values",
            input: labels(&[("a", "foo"), ("b", "foo")]),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                target_label: Some("b".into()),
                ..rule(RelabelAction::DropEqual)
            }],
            output: None,
        },
        Case {
            name: "dropequal keeps different values",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                target_label: Some("b".into()),
                ..rule(RelabelAction::DropEqual)
            }],
            output: Some(abc.clone()),
        },
        Case {
            name: "hashmod matches Prometheus (md5(baz) mod 1000 = 976)",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["c".into()],
                target_label: Some("d".into()),
                modulus: Some(1000),
                ..rule(RelabelAction::HashMod)
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("d", "976"),
            ])),
        },
        Case {
            name: "hashmod of joined sources",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into(), "b".into()],
                target_label: Some("shard".into()),
                modulus: Some(7),
                ..rule(RelabelAction::HashMod)
            }],
            // md5("foo;bar"), last 8 bytes big-endian, mod 7 (computed independently with Python's hashlib)
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("shard", "6"),
            ])),
        },
        Case {
            name: "labelmap copies matching names",
            input: labels(&[
                ("__meta_kubernetes_pod_label_app", "web"),
                ("__meta_kubernetes_pod_label_tier", "fe"),
                ("x", "y"),
            ]),
            rules: vec![RelabelConfig {
                regex: "__meta_kubernetes_pod_label_(.+)".into(),
                ..rule(RelabelAction::LabelMap)
            }],
            output: Some(labels(&[
                ("__meta_kubernetes_pod_label_app", "web"),
                ("__meta_kubernetes_pod_label_tier", "fe"),
                ("app", "web"),
                ("tier", "fe"),
                ("x", "y"),
            ])),
        },
        Case {
            name: "labelmap with a replacement template",
            input: abc.clone(),
            rules: vec![RelabelConfig {
                regex: "(b)".into(),
                replacement: "${1}_copy".into(),
                ..rule(RelabelAction::LabelMap)
            }],
            output: Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("b_copy", "bar"),
                ("c", "baz"),
            ])),
        },
        Case {
            name: "labeldrop removes matching names (anchored)",
            input: labels(&[("a", "1"), ("ab", "2"), ("b", "3")]),
            rules: vec![RelabelConfig {
                regex: "a".into(),
                ..rule(RelabelAction::LabelDrop)
            }],
            output: Some(labels(&[("ab", "2"), ("b", "3")])),
        },
        Case {
            name: "labelkeep keeps only matching names",
            input: labels(&[("a", "1"), ("ab", "2"), ("b", "3")]),
            rules: vec![RelabelConfig {
                regex: "a.*".into(),
                ..rule(RelabelAction::LabelKeep)
            }],
            output: Some(labels(&[("a", "1"), ("ab", "2")])),
        },
        Case {
            name: "lowercase",
            input: labels(&[("a", "FooBAR")]),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                target_label: Some("lower".into()),
                ..rule(RelabelAction::Lowercase)
            }],
            output: Some(labels(&[("a", "FooBAR"), ("lower", "foobar")])),
        },
        Case {
            name: "uppercase of an empty value removes the target",
            input: labels(&[("a", "x"), ("upper", "old")]),
            rules: vec![RelabelConfig {
                source_labels: vec!["missing".into()],
                target_label: Some("upper".into()),
                ..rule(RelabelAction::Uppercase)
            }],
            output: Some(labels(&[("a", "x")])),
        },
        Case {
            name: "uppercase",
            input: labels(&[("a", "FooBAR")]),
            rules: vec![RelabelConfig {
                source_labels: vec!["a".into()],
                target_label: Some("upper".into()),
                ..rule(RelabelAction::Uppercase)
            }],
            output: Some(labels(&[("a", "FooBAR"), ("upper", "FOOBAR")])),
        },
        Case {
            name: "rules apply in order and a later rule sees earlier results",
            input: abc.clone(),
            rules: vec![
                RelabelConfig {
                    source_labels: vec!["a".into()],
                    target_label: Some("copy".into()),
                    ..Default::default()
                },
                RelabelConfig {
                    source_labels: vec!["copy".into()],
                    regex: "foo".into(),
                    ..rule(RelabelAction::Drop)
                },
            ],
            output: None,
        },
    ]
}

#[test]
fn relabel_table() {
    let cases = cases();
    for case in &cases {
        run(case);
    }
    // Every action appears in the table.
    for action in [
        RelabelAction::Replace,
        RelabelAction::Keep,
        RelabelAction::Drop,
        RelabelAction::KeepEqual,
        RelabelAction::DropEqual,
        RelabelAction::HashMod,
        RelabelAction::LabelMap,
        RelabelAction::LabelDrop,
        RelabelAction::LabelKeep,
        RelabelAction::Lowercase,
        RelabelAction::Uppercase,
    ] {
        assert!(
            cases
                .iter()
                .any(|c| c.rules.iter().any(|r| r.action == action)),
            "no case covers {action:?}"
        );
    }
}

#[test]
fn hashmod_spreads_evenly() {
    let rule = RelabelConfig {
        source_labels: vec!["a".into()],
        target_label: Some("shard".into()),
        modulus: Some(10),
        ..rule(RelabelAction::HashMod)
    }
    .compile(0)
    .unwrap();
    let mut buckets = [0u32; 10];
    for i in 0..10_000 {
        let mut l = labels(&[("a", &format!("10.0.{}.{}:6060", i / 256, i % 256))]);
        assert!(rule.apply(&mut l));
        let shard: usize = l["shard"].parse().unwrap();
        buckets[shard] += 1;
    }
    for (shard, n) in buckets.iter().enumerate() {
        assert!(
            (850..=1150).contains(n),
            "shard {shard} got {n} of 10000: {buckets:?}"
        );
    }
}

#[test]
fn invalid_rules_are_refused_with_their_position() {
    let bad = [
        (
            RelabelConfig {
                regex: "(".into(),
                ..rule(RelabelAction::Keep)
            },
            "invalid regex",
        ),
        (rule(RelabelAction::Replace), "targetLabel is required"),
        (
            RelabelConfig {
                target_label: Some("x".into()),
                ..rule(RelabelAction::HashMod)
            },
            "modulus",
        ),
        (
            RelabelConfig {
                target_label: Some("bad-name".into()),
                ..rule(RelabelAction::Lowercase)
            },
            "not a valid label name",
        ),
        (
            RelabelConfig {
                source_labels: vec!["a".into()],
                ..rule(RelabelAction::LabelDrop)
            },
            "takes only regex",
        ),
        (
            RelabelConfig {
                target_label: Some("b".into()),
                regex: "x".into(),
                ..rule(RelabelAction::KeepEqual)
            },
            "takes only sourceLabels and targetLabel",
        ),
    ];
    for (config, want) in bad {
        let rules = vec![RelabelConfig::default_keep_all(), config];
        let err = compile_all(&rules).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
        assert!(err.contains("rule 1"), "{err:?} does not name the position");
    }
}

#[test]
fn yaml_defaults_match_prometheus() {
    let parsed: RelabelConfig = serde_yaml::from_str("targetLabel: x").unwrap();
    assert_eq!(parsed.separator, ";");
    assert_eq!(parsed.regex, "(.*)");
    assert_eq!(parsed.replacement, "$1");
    assert_eq!(parsed.action, RelabelAction::Replace);
    let err = serde_yaml::from_str::<RelabelConfig>("action: Replace").unwrap_err();
    assert!(err.to_string().contains("unknown variant"), "{err}");
}

impl RelabelConfig {
    fn default_keep_all() -> Self {
        rule(RelabelAction::Keep)
    }
}
