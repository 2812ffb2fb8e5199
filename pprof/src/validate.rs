//! Structural checks of a decoded profile: every reference resolves, so later stages can index
//! without checks failing at run time.

use std::collections::HashSet;

use super::Profile;

/// What is wrong with a profile. [`ValidateError::reason`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    /// The string table is empty or its first entry is not "".
    #[error("string table must start with an empty string")]
    BadStringTable,
    /// No sample types.
    #[error("profile declares no sample types")]
    NoSampleTypes,
    /// A string index is out of range.
    #[error("{field} refers to string {index}, but the table has {len} entries")]
    DanglingString {
        /// Where the index was found.
        field: &'static str,
        /// The index.
        index: i64,
        /// Size of the string table.
        len: usize,
    },
    /// A sample has the wrong number of values.
    #[error("sample {sample} has {got} values for {want} sample types")]
    ValueCount {
        /// Sample position.
        sample: usize,
        /// Values found.
        got: usize,
        /// Sample types declared.
        want: usize,
    },
    /// A sample refers to a location that does not exist.
    #[error("sample {sample} refers to unknown location {id}")]
    DanglingLocation {
        /// Sample position.
        sample: usize,
        /// The location id.
        id: u64,
    },
    /// A location refers to a mapping that does not exist.
    #[error("location {location} refers to unknown mapping {id}")]
    DanglingMapping {
        /// Location id.
        location: u64,
        /// The mapping id.
        id: u64,
    },
    /// A line refers to a function that does not exist.
    #[error("location {location} refers to unknown function {id}")]
    DanglingFunction {
        /// Location id.
        location: u64,
        /// The function id.
        id: u64,
    },
    /// An id is zero or used twice.
    #[error("{what} id {id} is zero or not unique")]
    BadId {
        /// Mapping, location or function.
        what: &'static str,
        /// The id.
        id: u64,
    },
}

impl ValidateError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadStringTable => "bad_string_table",
            Self::NoSampleTypes => "no_sample_types",
            Self::DanglingString { .. } => "dangling_string",
            Self::ValueCount { .. } => "value_count_mismatch",
            Self::DanglingLocation { .. } => "dangling_location",
            Self::DanglingMapping { .. } => "dangling_mapping",
            Self::DanglingFunction { .. } => "dangling_function",
            Self::BadId { .. } => "bad_id",
        }
    }
}

/// The ids of one table. Go numbers them 1..=n, so a bitmap indexed by id is the usual case;
/// sparse ids fall back to a hash set.
enum IdSet {
    Dense(Vec<bool>),
    Sparse(HashSet<u64>),
}

impl IdSet {
    fn contains(&self, id: &u64) -> bool {
        match self {
            Self::Dense(v) => usize::try_from(*id)
                .ok()
                .and_then(|i| v.get(i))
                .copied()
                .unwrap_or(false),
            Self::Sparse(s) => s.contains(id),
        }
    }
}

fn ids(what: &'static str, ids: impl Iterator<Item = u64> + Clone) -> Result<IdSet, ValidateError> {
    let (count, max) = ids
        .clone()
        .fold((0usize, 0u64), |(n, m), id| (n + 1, m.max(id)));
    if max <= count as u64 * 2 + 64 {
        let mut seen = vec![false; max as usize + 1];
        for id in ids {
            if id == 0 || std::mem::replace(&mut seen[id as usize], true) {
                return Err(ValidateError::BadId { what, id });
            }
        }
        return Ok(IdSet::Dense(seen));
    }
    let mut set = HashSet::with_capacity(count);
    for id in ids {
        if id == 0 || !set.insert(id) {
            return Err(ValidateError::BadId { what, id });
        }
    }
    Ok(IdSet::Sparse(set))
}

/// Checks that every reference in `p` resolves.
pub fn validate(p: &Profile) -> Result<(), ValidateError> {
    if p.string_table.first().is_none_or(|s| !s.is_empty()) {
        return Err(ValidateError::BadStringTable);
    }
    if p.sample_type.is_empty() {
        return Err(ValidateError::NoSampleTypes);
    }
    let len = p.string_table.len();
    let check = |field: &'static str, index: i64| -> Result<(), ValidateError> {
        if index < 0 || index as u64 >= len as u64 {
            Err(ValidateError::DanglingString { field, index, len })
        } else {
            Ok(())
        }
    };
    for vt in p.sample_type.iter().chain(p.period_type.as_ref()) {
        check("value type", vt.r#type)?;
        check("value unit", vt.unit)?;
    }
    for &s in &p.comment {
        check("comment", s)?;
    }
    check("drop_frames", p.drop_frames)?;
    check("keep_frames", p.keep_frames)?;
    check("default_sample_type", p.default_sample_type)?;
    check("doc_url", p.doc_url)?;

    let mappings = ids("mapping", p.mapping.iter().map(|m| m.id))?;
    for m in &p.mapping {
        check("mapping filename", m.filename)?;
        check("mapping build_id", m.build_id)?;
    }
    let functions = ids("function", p.function.iter().map(|f| f.id))?;
    for f in &p.function {
        check("function name", f.name)?;
        check("function system_name", f.system_name)?;
        check("function filename", f.filename)?;
    }
    let locations = ids("location", p.location.iter().map(|l| l.id))?;
    for l in &p.location {
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return Err(ValidateError::DanglingMapping {
                location: l.id,
                id: l.mapping_id,
            });
        }
        for line in &l.line {
            if !functions.contains(&line.function_id) {
                return Err(ValidateError::DanglingFunction {
                    location: l.id,
                    id: line.function_id,
                });
            }
        }
    }
    let want = p.sample_type.len();
    for (i, s) in p.sample.iter().enumerate() {
        if s.value.len() != want {
            return Err(ValidateError::ValueCount {
                sample: i,
                got: s.value.len(),
                want,
            });
        }
        if let Some(&id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return Err(ValidateError::DanglingLocation { sample: i, id });
        }
        for label in &s.label {
            check("label key", label.key)?;
            check("label str", label.str)?;
            check("label num_unit", label.num_unit)?;
        }
    }
    Ok(())
}
