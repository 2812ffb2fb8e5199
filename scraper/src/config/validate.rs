//! The checks a file passes before its jobs run; each error names the field.

use std::collections::BTreeSet;

use kubeprof_crds::{Scheme, relabel::compile_all};

use super::{Config, ConfigError};

/// The shortest scrape interval a file may ask for: profiles are expensive for the target.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Refuses nesting deeper than [`super::MAX_CONFIG_DEPTH`] before the YAML parser sees it: flow
/// collections (`[`, `{`) and block nesting (indentation, `- ` items) both count.
pub(super) fn check_depth(text: &str) -> Result<(), ConfigError> {
    let too_deep = || {
        invalid(
            "<file>",
            format!("nested more than {} levels deep", super::MAX_CONFIG_DEPTH),
        )
    };
    let mut flow = 0usize;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        let mut items = 0;
        while let Some(r) = rest.strip_prefix("- ") {
            items += 1;
            rest = r.trim_start_matches(' ');
        }
        // Quotes are not tracked: a bracket inside a string only makes the estimate higher.
        for c in rest.chars() {
            match c {
                '[' | '{' => flow += 1,
                ']' | '}' => flow = flow.saturating_sub(1),
                '#' => break,
                _ => {}
            }
            if flow > super::MAX_CONFIG_DEPTH {
                return Err(too_deep());
            }
        }
        if indent / 2 + items + flow > super::MAX_CONFIG_DEPTH {
            return Err(too_deep());
        }
        // A tag (`!!binary`, `!foo`) starts a token outside quotes; the parser would apply it
        // silently, so it is refused.
        let mut quotes = 0;
        for token in rest.split([' ', '[', '{', ',']) {
            if token.starts_with('#') && quotes % 2 == 0 {
                break;
            }
            if token.starts_with('!') && quotes % 2 == 0 {
                return Err(invalid(
                    "<file>",
                    format!("YAML tags ({token}) are not supported"),
                ));
            }
            quotes += token.matches(['"', '\'']).count();
        }
    }
    Ok(())
}

/// The first duration field of a target that does not parse, named with its path.
pub(super) fn bad_duration(raw: &serde_yaml::Value) -> Option<ConfigError> {
    if let Some(text) = raw
        .get("ebpf")
        .and_then(|e| e.get("period"))
        .and_then(serde_yaml::Value::as_str)
        && let Err(e) = text.parse::<kubeprof_crds::Duration>()
    {
        return Some(invalid("ebpf.period", e.to_string()));
    }
    let targets = raw.get("targets")?.as_sequence()?;
    for (i, t) in targets.iter().enumerate() {
        for key in ["interval", "scrapeTimeout"] {
            if let Some(text) = t.get(key).and_then(serde_yaml::Value::as_str)
                && let Err(e) = text.parse::<kubeprof_crds::Duration>()
            {
                return Some(invalid(format!("targets[{i}].{key}"), e.to_string()));
            }
        }
    }
    None
}

/// Refuses YAML tags and keys of sinks and profiles that the parsed types do not have.
pub(super) fn check_raw(raw: &serde_yaml::Value, config: &Config) -> Result<(), ConfigError> {
    no_tags(raw, "")?;
    let get = |v: &serde_yaml::Value, k: &str| v.get(k).cloned();
    if let Some(serde_yaml::Value::Sequence(sinks)) = get(raw, "sinks") {
        for (i, (raw_sink, sink)) in sinks.iter().zip(&config.sinks).enumerate() {
            let parsed = serde_yaml::to_value(sink).unwrap_or_default();
            unknown_keys(raw_sink, &parsed, &format!("sinks[{i}]"))?;
        }
    }
    if let (Some(raw_rules), Some(e)) = (
        raw.get("ebpf").and_then(|e| e.get("relabelings")),
        &config.ebpf,
    ) {
        let parsed = serde_yaml::to_value(&e.relabelings).unwrap_or_default();
        unknown_keys(raw_rules, &parsed, "ebpf.relabelings")?;
    }
    if let Some(serde_yaml::Value::Sequence(targets)) = get(raw, "targets") {
        for (i, (raw_target, target)) in targets.iter().zip(&config.targets).enumerate() {
            if let Some(raw_profiles) = raw_target.get("profiles") {
                let parsed = serde_yaml::to_value(&target.profiles).unwrap_or_default();
                unknown_keys(raw_profiles, &parsed, &format!("targets[{i}].profiles"))?;
            }
        }
    }
    Ok(())
}

fn no_tags(v: &serde_yaml::Value, path: &str) -> Result<(), ConfigError> {
    use serde_yaml::Value;
    match v {
        Value::Tagged(t) => Err(invalid(
            if path.is_empty() { "<file>" } else { path },
            format!("YAML tags ({}) are not supported", t.tag),
        )),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| no_tags(item, &format!("{path}[{i}]"))),
        Value::Mapping(m) => m.iter().try_for_each(|(k, item)| {
            let key = k.as_str().unwrap_or("?");
            let sub = if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            };
            no_tags(item, &sub)
        }),
        _ => Ok(()),
    }
}

/// Keys of `raw` (as written) that `parsed` (the value read back out) does not have. A key
/// set to null, or to a default the type does not write back, is not unknown.
fn unknown_keys(
    raw: &serde_yaml::Value,
    parsed: &serde_yaml::Value,
    path: &str,
) -> Result<(), ConfigError> {
    use serde_yaml::Value;
    match (raw, parsed) {
        (Value::Mapping(r), Value::Mapping(p)) => {
            for (k, v) in r {
                let key = k.as_str().unwrap_or("?");
                match p.get(k) {
                    Some(pv) => unknown_keys(v, pv, &format!("{path}.{key}"))?,
                    None if is_default(v) => {}
                    None => {
                        return Err(invalid(
                            format!("{path}.{key}"),
                            format!("unknown field `{key}`"),
                        ));
                    }
                }
            }
            Ok(())
        }
        (Value::Sequence(r), Value::Sequence(p)) => r
            .iter()
            .zip(p)
            .enumerate()
            .try_for_each(|(i, (rv, pv))| unknown_keys(rv, pv, &format!("{path}[{i}]"))),
        _ => Ok(()),
    }
}

/// Values a type may leave out when written back: null, false, empty.
fn is_default(v: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.values().all(is_default),
        _ => false,
    }
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let scrape = &self.scrape;
        for (field, value) in [
            ("scrape.maxConcurrent", scrape.max_concurrent as u64),
            ("scrape.maxProfileBytes", scrape.max_profile_bytes),
            ("scrape.maxDecompressedBytes", scrape.max_decompressed_bytes),
            ("scrape.maxDecodeBytes", scrape.max_decode_bytes),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        let mut sink_names = BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let field = format!("sinks[{i}]");
            if !sink_names.insert(sink.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("duplicate sink name {:?}", sink.name),
                ));
            }
            let backends = [
                sink.pyroscope.is_some(),
                sink.parca.is_some(),
                sink.otlp.is_some(),
                sink.file.is_some(),
            ];
            if backends.iter().filter(|b| **b).count() != 1 {
                return Err(invalid(
                    field,
                    "a sink needs exactly one of pyroscope, parca, otlp or file",
                ));
            }
        }
        if self.sinks.is_empty() {
            return Err(invalid(
                "sinks",
                "at least one sink is needed (e.g. `- name: local\\n  file: {directory: ./profiles}`)",
            ));
        }
        if let Some(e) = &self.ebpf {
            let names: Vec<&str> = sink_names.iter().copied().collect();
            super::ebpf::check(e, &names).map_err(|(field, message)| invalid(field, message))?;
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let field = |f: &str| format!("targets[{i}].{f}");
            if t.name.is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("duplicate target name {:?}", t.name),
                ));
            }
            if t.addresses.is_empty() {
                return Err(invalid(
                    field("addresses"),
                    "at least one host:port is needed",
                ));
            }
            for (j, a) in t.addresses.iter().enumerate() {
                let ok = a.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !ok {
                    return Err(invalid(
                        format!("targets[{i}].addresses[{j}]"),
                        format!("{a:?} is not host:port"),
                    ));
                }
            }
            if t.interval.std() < MIN_INTERVAL {
                return Err(invalid(
                    field("interval"),
                    format!("{} is shorter than the minimum, 1s", t.interval),
                ));
            }
            if t.scrape_timeout.std().is_zero() {
                return Err(invalid(field("scrapeTimeout"), "must be positive"));
            }
            if t.profiles.cpu.as_ref().and_then(|c| c.seconds) == Some(0) {
                return Err(invalid(field("profiles.cpu.seconds"), "must be at least 1"));
            }
            if t.scrape_timeout >= t.interval {
                return Err(invalid(
                    field("scrapeTimeout"),
                    format!(
                        "{} must be less than interval ({})",
                        t.scrape_timeout, t.interval
                    ),
                ));
            }
            if let Err(e) = compile_all(&t.relabelings) {
                return Err(invalid(field("relabelings"), e.to_string()));
            }
            for (j, s) in t.sinks.iter().enumerate() {
                if !sink_names.contains(s.as_str()) {
                    return Err(invalid(
                        format!("targets[{i}].sinks[{j}]"),
                        format!("no sink is named {s:?}"),
                    ));
                }
            }
            let mut custom = BTreeSet::new();
            for (j, c) in t.profiles.custom.iter().enumerate() {
                if !custom.insert(c.name.as_str())
                    || kubeprof_crds::ProfileKind::ALL
                        .iter()
                        .any(|k| k.metric_name() == c.name)
                {
                    return Err(invalid(
                        format!("targets[{i}].profiles.custom[{j}].name"),
                        format!("{:?} is used twice", c.name),
                    ));
                }
                if !c.path.starts_with('/') {
                    return Err(invalid(
                        format!("targets[{i}].profiles.custom[{j}].path"),
                        "must start with /",
                    ));
                }
            }
            if t.bearer_token_file.is_some() && t.basic_auth.is_some() {
                return Err(invalid(
                    field("bearerTokenFile"),
                    "bearerTokenFile and basicAuth are mutually exclusive",
                ));
            }
            if let Some(tls) = &t.tls_config
                && tls.cert_file.is_some() != tls.key_file.is_some()
            {
                return Err(invalid(
                    field("tlsConfig"),
                    "certFile and keyFile go together",
                ));
            }
            if t.scheme == Scheme::Http && t.tls_config.is_some() {
                return Err(invalid(field("tlsConfig"), "set scheme: https to use TLS"));
            }
        }
        Ok(())
    }
}
