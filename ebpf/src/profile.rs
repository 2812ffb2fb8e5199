//! Symbolised samples -> one pprof CPU profile (`kubeprof_pprof::Profile`).

use std::{collections::HashMap, sync::Arc};

use kubeprof_pprof::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

use crate::symbolize::{FrameFn, Frames};

/// A mapped file a frame's address falls in, as pprof describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MappingInfo {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The path inside the process's mount namespace, `[vdso]`, or `[kernel.kallsyms]`.
    pub path: String,
    /// Hex build id, or "".
    pub build_id: String,
}

/// One frame of a stack.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub address: u64,
    pub mapping: Option<Arc<MappingInfo>>,
    pub fns: Frames,
}

/// One aggregated sample, symbolised: a thread, its stack (innermost first) and how often it was
/// seen.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedSample {
    pub tgid: u32,
    pub pid: u32,
    /// The thread's name.
    pub comm: String,
    pub frames: Vec<Frame>,
    pub count: u64,
}

#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<Arc<MappingInfo>, u64>,
    functions: Vec<Function>,
    function_ids: HashMap<(String, Option<String>), u64>,
    locations: Vec<Location>,
    /// (mapping, address, marker name): markers (lost stacks) have no address.
    location_ids: HashMap<(u64, u64, String), u64>,
}

impl Tables {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn mapping(&mut self, m: &Arc<MappingInfo>, named: bool) -> u64 {
        if let Some(&id) = self.mapping_ids.get(m) {
            if named && let Some(mapping) = self.mappings.get_mut(id as usize - 1) {
                mapping.has_functions = true;
            }
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&m.path);
        let build_id = self.string(&m.build_id);
        self.mappings.push(Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename,
            build_id,
            has_functions: named,
            has_filenames: false,
            has_line_numbers: false,
            has_inline_frames: false,
        });
        self.mapping_ids.insert(Arc::clone(m), id);
        id
    }

    fn function(&mut self, f: &FrameFn) -> u64 {
        let key = (f.name.clone(), f.file.clone());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.string(&f.name);
        let filename = f.file.as_deref().map(|s| self.string(s)).unwrap_or(0);
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        let mapping_id = frame
            .mapping
            .as_ref()
            .map(|m| self.mapping(m, !frame.fns.is_empty()))
            .unwrap_or(0);
        let marker = match (frame.address, frame.fns.first()) {
            (0, Some(f)) => f.name.clone(),
            _ => String::new(),
        };
        let key = (mapping_id, frame.address, marker);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let line = frame
            .fns
            .iter()
            .map(|f| Line {
                function_id: self.function(f),
                line: i64::from(f.line),
                column: 0,
            })
            .collect();
        if let Some(m) = frame.mapping.as_ref()
            && frame.fns.iter().any(|f| f.line > 0)
            && let Some(&mid) = self.mapping_ids.get(m)
            && let Some(mapping) = self.mappings.get_mut(mid as usize - 1)
        {
            mapping.has_filenames = true;
            mapping.has_line_numbers = true;
            mapping.has_inline_frames |= frame.fns.len() > 1;
        }
        self.locations.push(Location {
            id,
            mapping_id,
            address: frame.address,
            line,
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }
}

/// The profile of `samples`: sample types `samples/count` and `cpu/nanoseconds` (the default),
/// period `period_ns` of `cpu/nanoseconds`; each sample carries its `pid`, `thread_id` and
/// `thread_name`.
pub(crate) fn build(
    samples: &[&ResolvedSample],
    time_nanos: i64,
    duration_nanos: i64,
    period_ns: i64,
) -> Profile {
    let mut t = Tables::default();
    t.string("");
    let value_type = |t: &mut Tables, ty: &str, unit: &str| ValueType {
        r#type: t.string(ty),
        unit: t.string(unit),
    };
    let sample_type = vec![
        value_type(&mut t, "samples", "count"),
        value_type(&mut t, "cpu", "nanoseconds"),
    ];
    let period_type = value_type(&mut t, "cpu", "nanoseconds");
    let (pid_key, tid_key, thread_key) = (
        t.string("pid"),
        t.string("thread_id"),
        t.string("thread_name"),
    );
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let location_id = s.frames.iter().map(|f| t.location(f)).collect();
        let count = i64::try_from(s.count).unwrap_or(i64::MAX);
        let thread = t.string(&s.comm);
        out.push(Sample {
            location_id,
            value: vec![count, count.saturating_mul(period_ns)],
            label: vec![
                Label {
                    key: pid_key,
                    str: 0,
                    num: i64::from(s.tgid),
                    num_unit: 0,
                },
                Label {
                    key: tid_key,
                    str: 0,
                    num: i64::from(s.pid),
                    num_unit: 0,
                },
                Label {
                    key: thread_key,
                    str: thread,
                    num: 0,
                    num_unit: 0,
                },
            ],
        });
    }
    let default_sample_type = sample_type[1].r#type;
    Profile {
        sample_type,
        sample: out,
        mapping: t.mappings,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos,
        period_type: Some(period_type),
        period: period_ns,
        comment: Vec::new(),
        default_sample_type,
        doc_url: 0,
    }
}
