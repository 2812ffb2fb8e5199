//! The checks a file passes before its jobs run; each error names the field.

use std::collections::BTreeSet;

use kubeprof_crds::{Scheme, relabel::compile_all};

use super::{Config, ConfigError};

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
            if t.interval.std().is_zero() {
                return Err(invalid(field("interval"), "must be positive"));
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
