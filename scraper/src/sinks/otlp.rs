//! OTLP profiles over HTTP (**experimental**, as upstream's `v1development` data model is):
//! `POST {endpoint}/v1development/profiles` with a protobuf `ExportProfilesServiceRequest` of
//! opentelemetry-proto release v1.7.0. Each pprof profile is converted to that data model:
//! its tables move into the request's `ProfilesDictionary` (functions, locations and mappings
//! by index instead of id), stacks become ranges of `location_indices`, pprof sample labels
//! become attributes, and the profile's labels become resource attributes (`service_name` as
//! `service.name`). One profile per request: the dictionary is per request.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, UNIX_EPOCH},
};

use kubeprof_pprof::{DecodeLimits, Profile, decode};
use prost::Message as _;

use super::{Envelope, SendError};
use crate::proto::opentelemetry::proto::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development::{
        AggregationTemporality, Function, Line, Location, Mapping, Profile as OtlpProfile,
        ProfilesDictionary, ResourceProfiles, Sample, ScopeProfiles, ValueType,
    },
    resource::v1::Resource,
};

/// The request path under the endpoint.
pub const PATH: &str = "/v1development/profiles";
/// Resource attribute holding the service name (OpenTelemetry semantic conventions).
pub const SERVICE_NAME_ATTRIBUTE: &str = "service.name";
/// Profile attribute holding kubeprof's profile type (`__name__`: process_cpu, memory, ...).
pub const PROFILE_TYPE_ATTRIBUTE: &str = "kubeprof.profile.type";

/// Settings of an OTLP sink.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// Base URL, e.g. `http://otel-collector:4318`.
    pub endpoint: String,
    /// Extra headers (e.g. an authorization header).
    pub headers: BTreeMap<String, String>,
    /// Request timeout.
    pub timeout: Duration,
}

/// Exports to an OTLP/HTTP receiver.
#[derive(Debug)]
pub struct OtlpSink {
    config: OtlpConfig,
    url: String,
    client: reqwest::Client,
}

/// Why a profile could not be converted.
#[derive(Debug, thiserror::Error)]
#[error("cannot convert the profile to OTLP: {0}")]
pub struct ConvertError(String);

fn string_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn index(i: usize) -> Result<i32, ConvertError> {
    i32::try_from(i).map_err(|_| ConvertError("more table entries than OTLP indices hold".into()))
}

/// Converts one pprof profile with its labels into an export request.
pub fn convert(
    profile: &Profile,
    labels: &BTreeMap<String, String>,
    duration: Duration,
) -> Result<ExportProfilesServiceRequest, ConvertError> {
    let mut dict = ProfilesDictionary {
        string_table: profile.string_table.clone(),
        ..Default::default()
    };
    if dict.string_table.first().is_none_or(|s| !s.is_empty()) {
        return Err(ConvertError("string_table[0] is not empty".into()));
    }
    let strindex = |i: i64| -> Result<i32, ConvertError> {
        i32::try_from(i)
            .ok()
            .filter(|i| (*i as usize) < profile.string_table.len() && *i >= 0)
            .ok_or_else(|| ConvertError(format!("string index {i} out of range")))
    };

    let mut mapping_index = HashMap::new();
    for m in &profile.mapping {
        mapping_index.insert(m.id, index(dict.mapping_table.len())?);
        dict.mapping_table.push(Mapping {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename_strindex: strindex(m.filename)?,
            attribute_indices: Vec::new(),
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_inline_frames,
        });
    }
    let mut function_index = HashMap::new();
    for f in &profile.function {
        function_index.insert(f.id, index(dict.function_table.len())?);
        dict.function_table.push(Function {
            name_strindex: strindex(f.name)?,
            system_name_strindex: strindex(f.system_name)?,
            filename_strindex: strindex(f.filename)?,
            start_line: f.start_line,
        });
    }
    let mut location_index = HashMap::new();
    for l in &profile.location {
        location_index.insert(l.id, index(dict.location_table.len())?);
        let lines = l
            .line
            .iter()
            .map(|line| {
                Ok(Line {
                    function_index: *function_index.get(&line.function_id).ok_or_else(|| {
                        ConvertError(format!(
                            "location {} names no function {}",
                            l.id, line.function_id
                        ))
                    })?,
                    line: line.line,
                    column: line.column,
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        dict.location_table.push(Location {
            mapping_index: (l.mapping_id != 0)
                .then(|| mapping_index.get(&l.mapping_id).copied())
                .flatten(),
            address: l.address,
            line: lines,
            is_folded: l.is_folded,
            attribute_indices: Vec::new(),
        });
    }

    // Attributes are deduplicated: the table holds each (key, value) once.
    let mut attribute_index: HashMap<(String, String), i32> = HashMap::new();
    let mut attribute = |dict: &mut ProfilesDictionary, key: &str, value: AnyValue| {
        let id = (key.to_owned(), format!("{:?}", value.value));
        if let Some(i) = attribute_index.get(&id) {
            return Ok(*i);
        }
        let i = index(dict.attribute_table.len())?;
        dict.attribute_table.push(KeyValue {
            key: key.to_owned(),
            value: Some(value),
        });
        attribute_index.insert(id, i);
        Ok::<i32, ConvertError>(i)
    };

    let temporality = |type_: &str| {
        // Deltas (CPU time, and what the scraper turned into deltas) against snapshots
        // (in-use memory, goroutines), which have no temporality of their own in OTLP; they are
        // sent as cumulative, the value at the time of the profile.
        if type_.starts_with("inuse_") || type_ == "goroutine" || type_ == "goroutines" {
            AggregationTemporality::Cumulative
        } else {
            AggregationTemporality::Delta
        }
    };
    let value_type = |vt: &kubeprof_pprof::ValueType| -> Result<ValueType, ConvertError> {
        let name = profile
            .string_table
            .get(vt.r#type as usize)
            .map(String::as_str)
            .unwrap_or("");
        Ok(ValueType {
            type_strindex: strindex(vt.r#type)?,
            unit_strindex: strindex(vt.unit)?,
            aggregation_temporality: temporality(name) as i32,
        })
    };

    let mut out = OtlpProfile {
        sample_type: profile
            .sample_type
            .iter()
            .map(value_type)
            .collect::<Result<_, _>>()?,
        time_nanos: profile.time_nanos,
        duration_nanos: if profile.duration_nanos > 0 {
            profile.duration_nanos
        } else {
            i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
        },
        period_type: profile.period_type.as_ref().map(value_type).transpose()?,
        period: profile.period,
        comment_strindices: profile
            .comment
            .iter()
            .map(|c| strindex(*c))
            .collect::<Result<_, _>>()?,
        default_sample_type_index: {
            let wanted = profile.default_sample_type;
            profile
                .sample_type
                .iter()
                .position(|vt| wanted != 0 && vt.r#type == wanted)
                .map_or(Ok(0), index)?
        },
        profile_id: profile_id(labels, profile.time_nanos),
        ..Default::default()
    };
    for s in &profile.sample {
        let start = index(out.location_indices.len())?;
        for id in &s.location_id {
            out.location_indices.push(
                *location_index
                    .get(id)
                    .ok_or_else(|| ConvertError(format!("a sample names no location {id}")))?,
            );
        }
        let mut attribute_indices = Vec::with_capacity(s.label.len());
        for l in &s.label {
            let key = profile
                .string_table
                .get(l.key as usize)
                .cloned()
                .unwrap_or_default();
            let value = if l.str != 0 {
                any_value::Value::StringValue(
                    profile
                        .string_table
                        .get(l.str as usize)
                        .cloned()
                        .unwrap_or_default(),
                )
            } else {
                any_value::Value::IntValue(l.num)
            };
            attribute_indices.push(attribute(&mut dict, &key, AnyValue { value: Some(value) })?);
        }
        out.sample.push(Sample {
            locations_start_index: start,
            locations_length: index(s.location_id.len())?,
            value: s.value.clone(),
            attribute_indices,
            link_index: None,
            timestamps_unix_nano: Vec::new(),
        });
    }
    if let Some(kind) = labels.get("__name__") {
        let i = attribute(
            &mut dict,
            PROFILE_TYPE_ATTRIBUTE,
            AnyValue {
                value: Some(any_value::Value::StringValue(kind.clone())),
            },
        )?;
        out.attribute_indices.push(i);
    }

    let resource = Resource {
        attributes: labels
            .iter()
            .filter(|(k, _)| k.as_str() != "__name__")
            .map(|(k, v)| {
                let key = if k == "service_name" {
                    SERVICE_NAME_ATTRIBUTE
                } else {
                    k.as_str()
                };
                string_value(key, v)
            })
            .collect(),
        dropped_attributes_count: 0,
    };
    Ok(ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(resource),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "kubeprof".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                profiles: vec![out],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(dict),
    })
}

/// A non-zero 16-byte id, stable for the same series and time (a retried request keeps it).
fn profile_id(labels: &BTreeMap<String, String>, time_nanos: i64) -> bytes::Bytes {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.update(&time_nanos.to_le_bytes());
    let id = h.digest128() | 1;
    bytes::Bytes::copy_from_slice(&id.to_le_bytes())
}

impl OtlpSink {
    /// A sink for `config`.
    pub fn new(config: OtlpConfig) -> Result<Self, String> {
        crate::tls::install_default_provider();
        let url = format!("{}{PATH}", config.endpoint.trim_end_matches('/'));
        reqwest::Url::parse(&url).map_err(|e| format!("endpoint {:?}: {e}", config.endpoint))?;
        for (k, v) in &config.headers {
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            reqwest::header::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("kubeprof-scraper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            url,
            client,
        })
    }

    /// Sends each profile of the batch as one request.
    pub async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        for envelope in batch {
            let profile = decode(&envelope.profile, &DecodeLimits::default())
                .map_err(|e| SendError::permanent("convert", e.to_string()))?;
            let duration = envelope
                .end
                .duration_since(envelope.start)
                .unwrap_or_default();
            let mut request = convert(&profile, &envelope.labels, duration)
                .map_err(|e| SendError::permanent("convert", e.to_string()))?;
            if let Some(p) = request
                .resource_profiles
                .first_mut()
                .and_then(|r| r.scope_profiles.first_mut())
                .and_then(|s| s.profiles.first_mut())
                && p.time_nanos == 0
            {
                p.time_nanos = envelope
                    .start
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            }
            let mut http = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .body(request.encode_to_vec());
            for (k, v) in &self.config.headers {
                http = http.header(k, v);
            }
            let response = http.send().await.map_err(|e| SendError::from_reqwest(&e))?;
            let status = response.status();
            if status.is_success() {
                continue;
            }
            return Err(SendError::from_response(response).await);
        }
        Ok(())
    }
}
