//! Bounds of every list and map in the API, and of every string in a spec, defined once: the schema declares them
//! (`maxItems`, `maxProperties`, `maxLength`) and the operator checks them
//! ([`crate::validation`]), so an object stored before a bound existed, or accepted by a server
//! that ignores some of the schema, is reported rather than half-applied.
//!
//! Why bounds at all: an API server with CEL (1.25 on) estimates the worst-case cost of each
//! `x-kubernetes-validations` rule times the number of times it can run, and refuses a CRD over
//! its budget. Under a list without `maxItems` (or a map without `maxProperties`) it assumes as
//! many elements as a 3 MiB request holds, about a million; kube-apiserver 1.32 refused the
//! unbounded CRDs by 2.3x. `crds/tests/cel_cost/` redoes that estimate on the committed YAML.
//!
//! The numbers are far above what a real ProfilingTarget or ProfilingPolicy holds, and low enough
//! that every rule stays 10x under the server's per-rule limit: the dearest rule, on relabelings
//! inside endpoints, runs at most [`MAX_ENDPOINTS`] x [`MAX_RELABELINGS`] = 16,384 times.

use schemars::Schema;
use serde_json::Value;

/// Endpoints of one ProfilingTarget.
pub const MAX_ENDPOINTS: u64 = 64;
/// Relabel rules of one endpoint, or of one ProfilingPolicy.
pub const MAX_RELABELINGS: u64 = 256;
/// `sourceLabels` of one relabel rule.
pub const MAX_SOURCE_LABELS: u64 = 32;
/// Custom profiles (`profiles.custom`) of one endpoint.
pub const MAX_CUSTOM_PROFILES: u64 = 32;
/// Query parameters of one endpoint, and values of one parameter.
pub const MAX_PARAMS: u64 = 32;
/// Static labels of a ProfilingTarget, external labels of a ProfilingPolicy.
pub const MAX_LABELS: u64 = 64;
/// Sinks of a ProfilingPolicy, and sink names a ProfilingTarget lists.
pub const MAX_SINKS: u64 = 32;
/// Extra HTTP headers of one sink.
pub const MAX_HEADERS: u64 = 64;
/// Namespaces named in one list (`namespaceSelector.matchNames`, eBPF include/exclude).
pub const MAX_NAMESPACES: u64 = 1024;
/// Profile type names in one list (`defaults.profileTypes`, `limits.allowedProfileTypes`).
pub const MAX_PROFILE_TYPES: u64 = 64;
/// `matchLabels` entries, `matchExpressions` and values of one expression, in a label selector.
pub const MAX_SELECTOR_TERMS: u64 = 64;
/// Conditions in a status (the operator writes two).
pub const MAX_CONDITIONS: u64 = 16;

/// A Prometheus label name: `targetLabel`, `sourceLabels`. Discovery labels of pod
/// labels and annotations reach 350 characters (`__meta_kubernetes_pod_annotation_` + 317).
pub const MAX_LABEL_NAME_LENGTH: u64 = 512;
/// A label value, a relabel `replacement`, a `serviceName`.
pub const MAX_LABEL_VALUE_LENGTH: u64 = 4096;
/// A relabel `regex` (long alternations of names are common).
pub const MAX_REGEX_LENGTH: u64 = 4096;
/// A relabel `separator`.
pub const MAX_SEPARATOR_LENGTH: u64 = 64;
/// A duration such as `1m30s`.
pub const MAX_DURATION_LENGTH: u64 = 32;
/// A Kubernetes object name or Secret key (DNS subdomain).
pub const MAX_NAME_LENGTH: u64 = 253;
/// A string in a label selector: a qualified label key is at most 317 characters (a 253-character
/// prefix, `/`, a 63-character name); values and operators are shorter.
pub const MAX_SELECTOR_STRING_LENGTH: u64 = 317;
/// A pod label key (`sampling.workloadLabel`): a 253-character prefix, `/`, a 63-character name.
pub const MAX_LABEL_KEY_LENGTH: u64 = 317;
/// A container port name (IANA service name).
pub const MAX_PORT_NAME_LENGTH: u64 = 15;
/// A namespace name, a sink or profile name, a profile type name (DNS label).
pub const MAX_DNS_LABEL_LENGTH: u64 = 63;
/// An HTTP path, a query parameter's name or value, a file-system directory.
pub const MAX_PATH_LENGTH: u64 = 4096;
/// A URL or `host:port` address.
pub const MAX_URL_LENGTH: u64 = 2048;
/// An HTTP header value or tenant ID.
pub const MAX_HEADER_VALUE_LENGTH: u64 = 8192;

/// `maxItems`/`maxProperties` and `maxLength` for a schema node and what it contains, for a type
/// whose schema this crate does not write (Kubernetes' `LabelSelector`): lists and maps get
/// `items`, strings get `string_length`, unless already bounded.
fn bound_all(obj: &mut serde_json::Map<String, Value>, items: u64, string_length: u64) {
    let ty = obj.get("type").cloned().unwrap_or(Value::Null);
    let is = |t: &str| ty == t || ty.as_array().is_some_and(|a| a.iter().any(|v| v == t));
    if is("array") {
        obj.entry("maxItems").or_insert(items.into());
    }
    if is("string") && !obj.contains_key("enum") && !obj.contains_key("format") {
        obj.entry("maxLength").or_insert(string_length.into());
    }
    if let Some(values) = obj
        .get_mut("additionalProperties")
        .and_then(Value::as_object_mut)
    {
        bound_all(values, items, string_length);
        obj.entry("maxProperties").or_insert(items.into());
    }
    if let Some(item) = obj.get_mut("items").and_then(Value::as_object_mut) {
        bound_all(item, items, string_length);
    }
    for prop in obj
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|p| p.values_mut())
        .filter_map(Value::as_object_mut)
    {
        bound_all(prop, items, string_length);
    }
}

/// `#[schemars(transform = limits::label_selector)]`: bounds a Kubernetes `LabelSelector` (or
/// the `matchExpressions` of one): [`MAX_SELECTOR_TERMS`] entries per list and map, strings at
/// [`MAX_SELECTOR_STRING_LENGTH`].
pub fn label_selector(schema: &mut Schema) {
    if let Some(obj) = schema.as_object_mut() {
        bound_all(obj, MAX_SELECTOR_TERMS, MAX_SELECTOR_STRING_LENGTH);
    }
}

/// `#[schemars(transform = limits::conditions)]`: bounds a status' `conditions` (messages stay
/// unbounded: only the operator writes them).
pub fn conditions(schema: &mut Schema) {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("maxItems".into(), MAX_CONDITIONS.into());
    }
}

/// A transform bounding a map: at most `entries` entries, and what each value holds through
/// `values` (a structural schema cannot bound the keys; no rule reads them).
pub fn map(entries: u64, values: impl Fn(&mut Value)) -> impl Fn(&mut Schema) {
    move |schema: &mut Schema| {
        if let Some(obj) = schema.as_object_mut() {
            obj.insert("maxProperties".into(), entries.into());
            if let Some(v) = obj.get_mut("additionalProperties") {
                values(v);
            }
        }
    }
}

/// For [`map`]: string values of at most `length` characters.
pub fn strings(length: u64) -> impl Fn(&mut Value) {
    move |v: &mut Value| {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("maxLength".into(), length.into());
        }
    }
}

/// For [`map`]: list values of at most `items` strings of at most `length` characters.
pub fn string_lists(items: u64, length: u64) -> impl Fn(&mut Value) {
    move |v: &mut Value| {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("maxItems".into(), items.into());
            if let Some(item) = obj.get_mut("items").and_then(Value::as_object_mut) {
                item.insert("maxLength".into(), length.into());
            }
        }
    }
}
