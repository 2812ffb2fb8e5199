//! Client-side validation of ProfilingTargets and ProfilingPolicies: what a CEL-enforcing API
//! server refuses, checked where the server may not have.
//!
//! - Bounds ([`crate::limits`]: `maxItems`, `maxProperties`, `maxLength`): every server enforces
//!   them at admission, but not on objects stored before a bound was added to the CRD.
//! - CEL rules (`x-kubernetes-validations`, with the `cel` feature): servers before 1.25 ignore
//!   them.
//!
//! The operator runs both on every object and reports what fails as `InvalidSpec`, instead of
//! applying the part of an object that happens to work.

use serde_json::Value;

/// Every list, map or string in `value` that exceeds the `maxItems`, `maxProperties` or
/// `maxLength` of its node in `schema`, as the API server words it (`<path>: Too many: 300: must
/// have at most 256 items`). `path` names `value` (e.g. `spec`).
pub fn bound_violations(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, value, path, &mut out);
    out
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let max = |key: &str| schema.get(key).and_then(Value::as_u64);
    match value {
        Value::Array(items) => {
            if let Some(max) = max("maxItems").filter(|m| items.len() as u64 > *m) {
                out.push(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    items.len()
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if additional.is_some()
                && let Some(max) = max("maxProperties").filter(|m| fields.len() as u64 > *m)
            {
                out.push(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    fields.len()
                ));
            }
            for (name, field) in fields {
                let field_schema = properties.and_then(|p| p.get(name)).or(additional);
                if let Some(field_schema) = field_schema {
                    walk(field_schema, field, &format!("{path}.{name}"), out);
                }
            }
        }
        Value::String(s) => {
            // maxLength counts code points, as OpenAPI says.
            let len = s.chars().count() as u64;
            if let Some(max) = max("maxLength").filter(|m| len > *m) {
                out.push(format!(
                    "{path}: Too long: must have at most {max} characters (has {len})"
                ));
            }
        }
        _ => {}
    }
}

#[cfg(feature = "cel")]
pub use with_cel::SpecValidator;

#[cfg(feature = "cel")]
mod with_cel {
    use kube::core::cel::{CompiledSchema, Validator, compile_schema};
    use serde::Serialize;
    use serde_json::Value;

    use super::bound_violations;
    use crate::{ProfilingPolicySpec, ProfilingTargetSpec};

    /// The spec schema of one CRD, with its CEL rules compiled.
    struct SpecSchema {
        schema: Value,
        rules: CompiledSchema,
    }

    impl SpecSchema {
        fn of(kind: &str) -> Self {
            let schema = crate::all_crds()
                .into_iter()
                .find(|crd| crd.spec.names.kind == kind)
                .and_then(|crd| crd.spec.versions.into_iter().next())
                .and_then(|v| v.schema)
                .and_then(|s| s.open_api_v3_schema)
                .and_then(|s| serde_json::to_value(s).ok())
                .map(|s| s["properties"]["spec"].clone())
                .unwrap_or_default();
            let rules = compile_schema(&schema);
            Self { schema, rules }
        }
    }

    /// Checks specs against the bounds and CEL rules of the CRDs this crate generates, with the
    /// rules compiled once.
    pub struct SpecValidator {
        cel: Validator,
        target: SpecSchema,
        policy: SpecSchema,
    }

    impl std::fmt::Debug for SpecValidator {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SpecValidator").finish_non_exhaustive()
        }
    }

    impl Default for SpecValidator {
        fn default() -> Self {
            Self::new()
        }
    }

    impl SpecValidator {
        /// Compiles the rules of both CRDs.
        pub fn new() -> Self {
            Self {
                cel: Validator::new(),
                target: SpecSchema::of("ProfilingTarget"),
                policy: SpecSchema::of("ProfilingPolicy"),
            }
        }

        /// What a CEL-enforcing API server would refuse in a ProfilingTarget's spec (empty: valid).
        pub fn target(&self, spec: &ProfilingTargetSpec) -> Vec<String> {
            self.check(&self.target, spec)
        }

        /// What a CEL-enforcing API server would refuse in a ProfilingPolicy's spec (empty: valid).
        pub fn policy(&self, spec: &ProfilingPolicySpec) -> Vec<String> {
            self.check(&self.policy, spec)
        }

        /// [`Self::target`] of a spec as JSON, before it is read into the Rust type (which
        /// refuses some values, such as durations over 24h, on its own).
        pub fn target_json(&self, spec: &Value) -> Vec<String> {
            self.check_value(&self.target, spec)
        }

        fn check(&self, schema: &SpecSchema, spec: &impl Serialize) -> Vec<String> {
            match serde_json::to_value(spec) {
                Ok(v) => self.check_value(schema, &v),
                Err(e) => vec![format!("spec: cannot be read: {e}")],
            }
        }

        fn check_value(&self, schema: &SpecSchema, value: &Value) -> Vec<String> {
            let value = value.clone();
            let mut out = bound_violations(&schema.schema, &value, "spec");
            if let Err(errors) = self.cel.validate_compiled(&schema.rules, &value, None) {
                out.extend(errors.iter().map(|e| {
                    if e.field_path.is_empty() {
                        format!("spec: {}", e.message)
                    } else {
                        format!("spec.{}: {}", e.field_path, e.message)
                    }
                }));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reports_lists_maps_and_strings_over_their_bounds() {
        let schema = json!({
            "type": "object",
            "properties": {
                "list": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
                "map": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
            },
        });
        let ok = json!({"list": ["abc", "é"], "map": {"a": "long enough"}});
        assert_eq!(bound_violations(&schema, &ok, "spec"), Vec::<String>::new());
        let bad = json!({"list": ["abcd", "b", "c"], "map": {"a": "1", "b": "2"}});
        assert_eq!(
            bound_violations(&schema, &bad, "spec"),
            [
                "spec.list: Too many: 3: must have at most 2 items",
                "spec.list[0]: Too long: must have at most 3 characters (has 4)",
                "spec.map: Too many: 2: must have at most 1 items",
            ]
        );
    }

    #[cfg(feature = "cel")]
    #[test]
    fn durations_over_a_day_are_refused_by_the_crds_cel_rule() {
        let validator = SpecValidator::new();
        let spec = |interval: &str, timeout: &str| {
            json!({
                "selector": {},
                "endpoints": [{"port": "pprof", "interval": interval, "scrapeTimeout": timeout}],
            })
        };
        assert_eq!(
            validator.target_json(&spec("24h", "10s")),
            Vec::<String>::new()
        );
        let errors = validator.target_json(&spec("25h", "1441m"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().all(|e| e.contains("must be at most 24h")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.endpoints[0].interval")),
            "{errors:?}"
        );
    }
}
