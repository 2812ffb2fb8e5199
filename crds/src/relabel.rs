//! Prometheus relabelling: the `RelabelConfig` shape and its semantics, as a pure function.
//!
//! The behaviour follows Prometheus' `model/relabel`: the regex is fully anchored, the source
//! values are joined with the separator (a missing label is the empty string), `$1`/`${1}`/
//! `$name` expand as in Go's `Regexp.Expand` (the longest name wins: `$1x` is the group named
//! `1x`), setting a label to the empty string removes it, and `hashmod` takes the last 8 bytes of
//! the MD5 of the joined value, big-endian, modulo `modulus`.

use std::collections::BTreeMap;

use kube::KubeSchema;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of labels, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// What a relabel rule does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RelabelAction {
    /// Set `targetLabel` to `replacement` (with captures expanded) when `regex` matches.
    #[default]
    Replace,
    /// Drop the target unless `regex` matches the joined source values.
    Keep,
    /// Drop the target when `regex` matches the joined source values.
    Drop,
    /// Drop the target unless the joined source values equal `targetLabel`'s value.
    KeepEqual,
    /// Drop the target when the joined source values equal `targetLabel`'s value.
    DropEqual,
    /// Set `targetLabel` to the MD5 of the joined source values modulo `modulus`.
    HashMod,
    /// Copy every label whose name matches `regex` to the name given by `replacement`.
    LabelMap,
    /// Remove every label whose name matches `regex`.
    LabelDrop,
    /// Remove every label whose name does not match `regex`.
    LabelKeep,
    /// Set `targetLabel` to the lower-cased joined source values.
    Lowercase,
    /// Set `targetLabel` to the upper-cased joined source values.
    Uppercase,
}

impl RelabelAction {
    /// The name written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replace => "replace",
            Self::Keep => "keep",
            Self::Drop => "drop",
            Self::KeepEqual => "keepequal",
            Self::DropEqual => "dropequal",
            Self::HashMod => "hashmod",
            Self::LabelMap => "labelmap",
            Self::LabelDrop => "labeldrop",
            Self::LabelKeep => "labelkeep",
            Self::Lowercase => "lowercase",
            Self::Uppercase => "uppercase",
        }
    }

    fn needs_target_label(self) -> bool {
        matches!(
            self,
            Self::Replace
                | Self::HashMod
                | Self::Lowercase
                | Self::Uppercase
                | Self::KeepEqual
                | Self::DropEqual
        )
    }
}

fn default_separator() -> String {
    ";".to_owned()
}
fn default_regex() -> String {
    "(.*)".to_owned()
}
fn default_replacement() -> String {
    "$1".to_owned()
}
fn is_default_separator(s: &str) -> bool {
    s == ";"
}
fn is_default_regex(s: &str) -> bool {
    s == "(.*)"
}
fn is_default_replacement(s: &str) -> bool {
    s == "$1"
}

/// One relabelling step, in Prometheus' shape (`sourceLabels`, `separator`, `targetLabel`,
/// `regex`, `modulus`, `replacement`, `action`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.action in ['replace', 'hashmod', 'lowercase', 'uppercase', 'keepequal', 'dropequal']) || (has(self.targetLabel) && self.targetLabel != '')").message("targetLabel is required for the replace, hashmod, lowercase, uppercase, keepequal and dropequal actions"),
    validation = Rule::new("self.action != 'hashmod' || (has(self.modulus) && self.modulus > 0)").message("modulus must be set to a positive number for the hashmod action"),
    validation = Rule::new("!(self.action in ['labeldrop', 'labelkeep']) || (!has(self.sourceLabels) && !has(self.targetLabel))").message("labeldrop and labelkeep take only regex, no sourceLabels or targetLabel"),
)]
pub struct RelabelConfig {
    /// Labels whose values are joined with `separator` and matched against `regex`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_SOURCE_LABELS), inner(length(max = crate::limits::MAX_LABEL_NAME_LENGTH)))]
    pub source_labels: Vec<String>,
    /// Joins the source values. Default `;`.
    #[serde(
        default = "default_separator",
        skip_serializing_if = "is_default_separator"
    )]
    #[schemars(length(max = crate::limits::MAX_SEPARATOR_LENGTH))]
    pub separator: String,
    /// The label written by replace, hashmod, lowercase and uppercase, and compared by
    /// keepequal/dropequal. `$1`-style references are expanded for replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_LABEL_NAME_LENGTH))]
    pub target_label: Option<String>,
    /// RE2 regular expression, fully anchored. Default `(.*)`.
    #[serde(default = "default_regex", skip_serializing_if = "is_default_regex")]
    #[schemars(length(max = crate::limits::MAX_REGEX_LENGTH))]
    pub regex: String,
    /// Modulus of the hash for hashmod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub modulus: Option<u64>,
    /// Written by replace and labelmap; `$1`, `${1}` and `$name` refer to regex groups.
    /// Default `$1`.
    #[serde(
        default = "default_replacement",
        skip_serializing_if = "is_default_replacement"
    )]
    #[schemars(length(max = crate::limits::MAX_LABEL_VALUE_LENGTH))]
    pub replacement: String,
    /// The action. Default `replace`.
    #[serde(default)]
    pub action: RelabelAction,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        Self {
            source_labels: Vec::new(),
            separator: default_separator(),
            target_label: None,
            regex: default_regex(),
            modulus: None,
            replacement: default_replacement(),
            action: RelabelAction::Replace,
        }
    }
}

/// Why a relabel rule cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelabelError {
    /// The regex does not compile.
    #[error("relabel rule {index}: invalid regex {regex:?}: {reason}")]
    InvalidRegex {
        /// Position of the rule in its list.
        index: usize,
        /// The regex as written.
        regex: String,
        /// The compiler's message.
        reason: String,
    },
    /// A field the action needs is missing or a field it forbids is set.
    #[error("relabel rule {index} ({action}): {reason}")]
    InvalidRule {
        /// Position of the rule in its list.
        index: usize,
        /// The rule's action.
        action: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A relabel rule whose regex is compiled and whose fields are checked.
#[derive(Clone, Debug)]
pub struct CompiledRelabel {
    config: RelabelConfig,
    regex: Regex,
}

/// Whether `name` is a valid Prometheus label name (the legacy, ASCII charset that Pyroscope
/// and Parca accept).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every character that is not valid in a label name with `_` (as Prometheus'
/// Kubernetes discovery does for pod labels).
pub fn sanitize_label_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl RelabelConfig {
    /// Checks the rule and compiles its regex. `index` is the rule's position, for messages.
    pub fn compile(&self, index: usize) -> Result<CompiledRelabel, RelabelError> {
        let invalid = |reason: String| RelabelError::InvalidRule {
            index,
            action: self.action.as_str(),
            reason,
        };
        let target = self.target_label.as_deref().unwrap_or("");
        if self.action.needs_target_label() && target.is_empty() {
            return Err(invalid("targetLabel is required".into()));
        }
        match self.action {
            RelabelAction::HashMod if self.modulus.unwrap_or(0) == 0 => {
                return Err(invalid("modulus must be a positive number".into()));
            }
            RelabelAction::Lowercase
            | RelabelAction::Uppercase
            | RelabelAction::KeepEqual
            | RelabelAction::DropEqual
            | RelabelAction::HashMod
                if !is_valid_label_name(target) =>
            {
                return Err(invalid(format!("{target:?} is not a valid label name")));
            }
            // replace may build its target from captures; only a literal target is checked.
            RelabelAction::Replace if !target.contains('$') && !is_valid_label_name(target) => {
                return Err(invalid(format!("{target:?} is not a valid label name")));
            }
            RelabelAction::KeepEqual | RelabelAction::DropEqual
                if !is_default_regex(&self.regex)
                    || self.modulus.is_some()
                    || !is_default_separator(&self.separator)
                    || !is_default_replacement(&self.replacement) =>
            {
                return Err(invalid(
                    "takes only sourceLabels and targetLabel, no other fields".into(),
                ));
            }
            RelabelAction::LabelDrop | RelabelAction::LabelKeep
                if !self.source_labels.is_empty()
                    || self.target_label.is_some()
                    || self.modulus.is_some()
                    || !is_default_separator(&self.separator)
                    || !is_default_replacement(&self.replacement) =>
            {
                return Err(invalid("takes only regex, no other fields".into()));
            }
            _ => {}
        }
        let regex = Regex::new(&format!("^(?s:{})$", self.regex)).map_err(|e| {
            RelabelError::InvalidRegex {
                index,
                regex: self.regex.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(CompiledRelabel {
            config: self.clone(),
            regex,
        })
    }
}

/// Compiles a list of rules, naming the first bad one.
pub fn compile_all(rules: &[RelabelConfig]) -> Result<Vec<CompiledRelabel>, RelabelError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| r.compile(i))
        .collect()
}

fn set(labels: &mut Labels, name: &str, value: String) {
    if value.is_empty() {
        labels.remove(name);
    } else if let Some(v) = labels.get_mut(name) {
        *v = value;
    } else {
        labels.insert(name.to_owned(), value);
    }
}

/// Last 8 bytes of the MD5 digest, big-endian: what Prometheus' `sum64` computes (its shifts of
/// the first 8 bytes overflow to zero).
fn hashmod(value: &str, modulus: u64) -> u64 {
    use md5::Digest;
    let digest = md5::Md5::digest(value.as_bytes());
    let mut last = [0u8; 8];
    last.copy_from_slice(&digest[8..16]);
    u64::from_be_bytes(last) % modulus
}

impl CompiledRelabel {
    /// The rule as written.
    pub fn config(&self) -> &RelabelConfig {
        &self.config
    }

    fn joined_source(&self, labels: &Labels) -> String {
        let mut out = String::new();
        for (i, name) in self.config.source_labels.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.config.separator);
            }
            if let Some(v) = labels.get(name) {
                out.push_str(v);
            }
        }
        out
    }

    /// Applies the rule; `false` means the target is dropped.
    pub fn apply(&self, labels: &mut Labels) -> bool {
        let cfg = &self.config;
        let target = cfg.target_label.as_deref().unwrap_or("");
        match cfg.action {
            RelabelAction::Keep => self.regex.is_match(&self.joined_source(labels)),
            RelabelAction::Drop => !self.regex.is_match(&self.joined_source(labels)),
            RelabelAction::KeepEqual => {
                labels.get(target).map(String::as_str).unwrap_or("") == self.joined_source(labels)
            }
            RelabelAction::DropEqual => {
                labels.get(target).map(String::as_str).unwrap_or("") != self.joined_source(labels)
            }
            RelabelAction::Replace => {
                let value = self.joined_source(labels);
                if let Some(caps) = self.regex.captures(&value) {
                    let mut name = String::new();
                    caps.expand(target, &mut name);
                    if is_valid_label_name(&name) {
                        let mut replacement = String::new();
                        caps.expand(&cfg.replacement, &mut replacement);
                        set(labels, &name, replacement);
                    }
                }
                true
            }
            RelabelAction::Lowercase => {
                let value = self.joined_source(labels).to_lowercase();
                set(labels, target, value);
                true
            }
            RelabelAction::Uppercase => {
                let value = self.joined_source(labels).to_uppercase();
                set(labels, target, value);
                true
            }
            RelabelAction::HashMod => {
                let value = self.joined_source(labels);
                let m = hashmod(&value, cfg.modulus.unwrap_or(1).max(1));
                set(labels, target, m.to_string());
                true
            }
            RelabelAction::LabelMap => {
                let mapped: Vec<(String, String)> = labels
                    .iter()
                    .filter_map(|(name, value)| {
                        let caps = self.regex.captures(name)?;
                        let mut new_name = String::new();
                        caps.expand(&cfg.replacement, &mut new_name);
                        Some((new_name, value.clone()))
                    })
                    .collect();
                for (name, value) in mapped {
                    set(labels, &name, value);
                }
                true
            }
            RelabelAction::LabelDrop => {
                labels.retain(|name, _| !self.regex.is_match(name));
                true
            }
            RelabelAction::LabelKeep => {
                labels.retain(|name, _| self.regex.is_match(name));
                true
            }
        }
    }
}

/// Applies `rules` in order; `false` as soon as one drops the target (the labels are then in an
/// unspecified intermediate state).
pub fn relabel(labels: &mut Labels, rules: &[CompiledRelabel]) -> bool {
    rules.iter().all(|rule| rule.apply(labels))
}

#[cfg(test)]
#[path = "relabel_tests.rs"]
mod tests;
