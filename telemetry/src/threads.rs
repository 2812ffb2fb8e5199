//! `/debug/pprof/threads`: the process's threads by name, state and wait channel, as a pprof
//! profile (`threads/count`), read from `/proc/self/task`.
//!
//! Go's goroutine profile answers "what is every goroutine doing right now"; this is the
//! nearest a Rust process can say without unsafe stack walking of other threads. Unlike a CPU
//! profile it is never empty: an idle process shows where its threads wait (`do_epoll_wait`,
//! `futex_do_wait`, ...), which is what a new user of the standalone scraper sees first.

use std::collections::BTreeMap;

use pprof::protos::{Function, Line, Location, Profile, Sample, ValueType};

/// One thread as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Thread {
    name: String,
    state: &'static str,
    wchan: Option<String>,
}

fn state_name(code: char) -> &'static str {
    match code {
        'R' => "running",
        'S' => "sleeping",
        'D' => "waiting on I/O (uninterruptible)",
        'T' | 't' => "stopped",
        'Z' => "zombie",
        'I' => "idle",
        _ => "other",
    }
}

/// Parses a `/proc/<pid>/task/<tid>/stat` line: `tid (comm) S ...`; comm may hold spaces and
/// parentheses, so the state is what follows the last `)`.
fn parse_stat(stat: &str) -> Option<(String, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((name, state))
}

fn read_threads() -> std::io::Result<Vec<Thread>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        // A thread that exits while we read is skipped.
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((name, state)) = parse_stat(&stat) else {
            continue;
        };
        let wchan = std::fs::read_to_string(dir.join("wchan"))
            .ok()
            .map(|w| w.trim().to_owned())
            .filter(|w| !w.is_empty() && w != "0");
        threads.push(Thread {
            name,
            state: state_name(state),
            wchan,
        });
    }
    Ok(threads)
}

/// Builds the profile: one sample per distinct (name, state, wait channel), valued by count.
fn profile(threads: &[Thread]) -> Profile {
    let mut strings: Vec<String> = vec![String::new()];
    let mut index: BTreeMap<String, i64> = BTreeMap::new();
    let mut intern = |s: &str| -> i64 {
        if let Some(i) = index.get(s) {
            return *i;
        }
        let i = strings.len() as i64;
        strings.push(s.to_owned());
        index.insert(s.to_owned(), i);
        i
    };
    let mut counts: BTreeMap<&Thread, i64> = BTreeMap::new();
    for t in threads {
        *counts.entry(t).or_default() += 1;
    }
    let mut frames: BTreeMap<String, u64> = BTreeMap::new();
    let mut functions = Vec::new();
    let mut locations = Vec::new();
    let mut frame = |name: String, intern: &mut dyn FnMut(&str) -> i64| -> u64 {
        if let Some(id) = frames.get(&name) {
            return *id;
        }
        let id = frames.len() as u64 + 1;
        functions.push(Function {
            id,
            name: intern(&name),
            system_name: 0,
            filename: 0,
            start_line: 0,
        });
        locations.push(Location {
            id,
            mapping_id: 0,
            address: 0,
            line: vec![Line {
                function_id: id,
                line: 0,
            }],
            is_folded: false,
        });
        frames.insert(name, id);
        id
    };
    let sample_type = ValueType {
        ty: intern("threads"),
        unit: intern("count"),
    };
    let mut samples = Vec::new();
    for (t, n) in counts {
        // Leaf first, as pprof orders a sample's locations.
        let mut stack = Vec::new();
        if let Some(w) = &t.wchan {
            stack.push(frame(w.clone(), &mut intern));
        }
        stack.push(frame(t.state.to_owned(), &mut intern));
        stack.push(frame(format!("thread {}", t.name), &mut intern));
        samples.push(Sample {
            location_id: stack,
            value: vec![n],
            label: vec![],
        });
    }
    let time_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Profile {
        sample_type: vec![sample_type],
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings,
        time_nanos,
        ..Default::default()
    }
}

/// The gzip-compressed profile of this process's threads.
pub fn threads_profile() -> std::io::Result<Vec<u8>> {
    let threads = read_threads()?;
    use pprof::protos::Message as _;
    let raw = profile(&threads).encode_to_vec();
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        assert_eq!(
            parse_stat("12 (tokio-rt-worker) S 1 2 3"),
            Some(("tokio-rt-worker".into(), 'S'))
        );
        assert_eq!(
            parse_stat("12 (a) b) (c) R 1 2"),
            Some(("a) b) (c".into(), 'R'))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_at_least_one_thread_in_the_profile() {
        let Ok(threads) = read_threads() else {
            println!("SKIPPED: no /proc/self/task on this system");
            return;
        };
        let p = profile(&threads);
        let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total as usize, threads.len());
        assert!(total >= 1);
        assert!(
            p.string_table.iter().any(|s| s.starts_with("thread ")),
            "{:?}",
            p.string_table
        );
    }
}
