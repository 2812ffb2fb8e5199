//! pprof to the OTLP profiles data model (opentelemetry-proto v1.7.0, `v1development`): the
//! profile's tables move into the request's `ProfilesDictionary` (functions, locations and
//! mappings by index instead of id), stacks become ranges of `location_indices`, pprof sample
//! labels become attributes, and the profile's labels become resource attributes
//! (`service_name` as `service.name`).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use kubeprof_pprof::Profile;

use crate::proto::opentelemetry::proto::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development::{
        AggregationTemporality, Function, Line, Location, Mapping, Profile as OtlpProfile,
        ProfilesDictionary, ResourceProfiles, Sample, ScopeProfiles, ValueType,
    },
    resource::v1::Resource,
};

/// Resource attribute holding the service name (OpenTelemetry semantic conventions).
pub const SERVICE_NAME_ATTRIBUTE: &str = "service.name";
/// Profile attribute holding kubeprof's profile type (`__name__`: process_cpu, memory, ...).
pub const PROFILE_TYPE_ATTRIBUTE: &str = "kubeprof.profile.type";

/// Why a profile could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A table is longer than an OTLP index can address.
    #[error("cannot convert the profile to OTLP: more table entries than OTLP indices hold")]
    TooManyEntries,
    /// The string table does not start with "".
    #[error("cannot convert the profile to OTLP: string_table[0] is not empty")]
    StringTable,
    /// A string index outside the table.
    #[error("cannot convert the profile to OTLP: string index {0} out of range")]
    StringIndex(i64),
    /// A location line names a function that does not exist.
    #[error("cannot convert the profile to OTLP: location {location} names no function {function}")]
    NoSuchFunction {
        /// The location's id.
        location: u64,
        /// The function id it names.
        function: u64,
    },
    /// A sample names a location that does not exist.
    #[error("cannot convert the profile to OTLP: a sample names no location {0}")]
    NoSuchLocation(u64),
}

fn string_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn index(i: usize) -> Result<i32, ConvertError> {
    i32::try_from(i).map_err(|_| ConvertError::TooManyEntries)
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
        return Err(ConvertError::StringTable);
    }
    let strindex = |i: i64| -> Result<i32, ConvertError> {
        i32::try_from(i)
            .ok()
            .filter(|i| (*i as usize) < profile.string_table.len() && *i >= 0)
            .ok_or(ConvertError::StringIndex(i))
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
                    function_index: *function_index.get(&line.function_id).ok_or(
                        ConvertError::NoSuchFunction {
                            location: l.id,
                            function: line.function_id,
                        },
                    )?,
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
                    .ok_or(ConvertError::NoSuchLocation(*id))?,
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
            // `__delta__` is Pyroscope's push-API marker: OTLP has no such convention, and
            // Pyroscope's OTLP ingest marks every profile it receives `__delta__="false"`
            // itself (grafana/pyroscope `pkg/ingester/otlp`).
            .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "__delta__"))
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
