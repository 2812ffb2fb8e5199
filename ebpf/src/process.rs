//! What user space reads of a sampled process while it lives (`/proc/<pid>/{comm,exe,stat,maps}`),
//! so that its samples can be symbolised after it exits: its executable mappings, each with the
//! mapped file held open through `/proc/<pid>/map_files/`.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

/// The label names of the per-process facts, for the label pipeline (`kubeprof_crds::labels`):
/// discovery labels, dropped before sending unless a relabel rule copies them.
pub mod labels {
    /// The process id (tgid).
    pub const META_PROCESS_PID: &str = "__meta_process_pid";
    /// The process name (`/proc/<pid>/comm` of its main thread).
    pub const META_PROCESS_COMM: &str = "__meta_process_comm";
    /// The executable's path, as the process sees it (inside its container).
    pub const META_PROCESS_EXE: &str = "__meta_process_exe";
}

/// The facts about a sampled process that the label pipeline can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Process id (tgid).
    pub pid: u32,
    /// Name of the main thread (`comm`, at most 15 bytes).
    pub comm: String,
    /// The executable's path, when it could be read.
    pub exe: Option<String>,
    /// The cgroup v2 id the process was last sampled in.
    pub cgroup_id: u64,
}

impl ProcessFacts {
    /// `__meta_process_pid`, `__meta_process_comm` and (when known) `__meta_process_exe`.
    pub fn meta_labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(labels::META_PROCESS_PID.to_string(), self.pid.to_string());
        l.insert(labels::META_PROCESS_COMM.to_string(), self.comm.clone());
        if let Some(exe) = &self.exe {
            l.insert(labels::META_PROCESS_EXE.to_string(), exe.clone());
        }
        l
    }
}

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    /// `major:minor` as written.
    pub dev: String,
    pub inode: u64,
    /// The path, a `[pseudo]` name, or empty for anonymous memory.
    pub path: String,
}

/// Parses `/proc/<pid>/maps`, skipping lines of another shape.
pub(crate) fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    // "start-end perms offset dev inode   path" (the path may contain spaces).
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let r = rest.trim_start();
        let end = r.find(' ').unwrap_or(r.len());
        let (f, tail) = r.split_at(end);
        rest = tail;
        (!f.is_empty()).then_some(f)
    };
    let (range, perms, offset, dev, inode) = (field()?, field()?, field()?, field()?, field()?);
    let (start, end) = range.split_once('-')?;
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path: rest.trim_start().to_string(),
    })
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`): with
/// the pid, it names the process, since pids are reused.
pub(crate) fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // The comm (field 2) is in parentheses and may hold anything, parentheses included.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// An ELF file mapped by some sampled process, held open so it stays readable after the process
/// exits (and from outside its mount namespace).
#[derive(Debug)]
pub(crate) struct ObjectFile {
    pub build_id: Option<Vec<u8>>,
    /// `/proc/self/fd/<n>` of `file`: how the symboliser opens it.
    pub open_path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    _file: File,
}

/// Identity of a mapped file: its build id where it has one, else its device and inode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ObjectKey {
    BuildId(Vec<u8>),
    Inode(String, u64),
}

/// An executable mapping of a process.
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The path, or `[vdso]` and the like.
    pub path: String,
    /// The open file, when it could be opened.
    pub object: Option<Arc<ObjectFile>>,
}

/// A sampled process as read from `/proc`.
#[derive(Debug)]
pub(crate) struct Process {
    pub facts: ProcessFacts,
    pub start_time: Option<u64>,
    pub mappings: Vec<Mapping>,
    /// Collections in a row without a sample of it.
    pub idle_collections: u32,
}

impl Process {
    /// The mapping holding `addr`.
    pub fn mapping(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        self.mappings
            .get(i.checked_sub(1)?)
            .filter(|m| addr < m.end)
    }
}

/// The mapped files, shared by every process that maps them, bounded.
#[derive(Debug)]
pub(crate) struct ObjectCache {
    objects: HashMap<ObjectKey, Arc<ObjectFile>>,
    /// (dev, inode) -> key, so a file already open is not opened again.
    by_inode: HashMap<(String, u64), ObjectKey>,
    max: usize,
}

impl ObjectCache {
    pub fn new(max: usize) -> Self {
        Self {
            objects: HashMap::new(),
            by_inode: HashMap::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// The open file of a mapping of `pid`, opening it when new.
    fn get_or_open(
        &mut self,
        proc_root: &Path,
        pid: u32,
        line: &MapsLine,
    ) -> Option<Arc<ObjectFile>> {
        let inode_key = (line.dev.clone(), line.inode);
        if let Some(o) = self
            .by_inode
            .get(&inode_key)
            .and_then(|k| self.objects.get(k))
        {
            return Some(Arc::clone(o));
        }
        if self.objects.len() >= self.max {
            return None;
        }
        let map_file = proc_root.join(format!("{pid}/map_files/{:x}-{:x}", line.start, line.end));
        let file = File::open(map_file).ok()?;
        let open_path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ));
        let build_id = blazesym::helper::read_elf_build_id(&open_path)
            .ok()
            .flatten()
            .map(|b| b.to_vec());
        let key = match &build_id {
            Some(b) => ObjectKey::BuildId(b.clone()),
            None => ObjectKey::Inode(line.dev.clone(), line.inode),
        };
        self.by_inode.insert(inode_key, key.clone());
        let object = self.objects.entry(key).or_insert_with(|| {
            Arc::new(ObjectFile {
                build_id,
                open_path,
                size: file.metadata().map_or(0, |m| m.len()),
                _file: file,
            })
        });
        Some(Arc::clone(object))
    }

    /// Closes the files no process maps any more; returns their symboliser paths.
    pub fn evict_unused(&mut self) -> Vec<PathBuf> {
        let unused: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, o)| Arc::strong_count(o) == 1)
            .map(|(k, _)| k.clone())
            .collect();
        let mut paths = Vec::new();
        for k in unused {
            if let Some(o) = self.objects.remove(&k) {
                paths.push(o.open_path.clone());
            }
        }
        self.by_inode.retain(|_, k| self.objects.contains_key(k));
        paths
    }
}

/// Reads process `pid` under `proc_root` (normally `/proc`). `None` when it is gone.
pub(crate) fn read_process(proc_root: &Path, pid: u32, cache: &mut ObjectCache) -> Option<Process> {
    let dir = proc_root.join(pid.to_string());
    let start_time = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|s| parse_stat_start_time(&s));
    let comm = std::fs::read_to_string(dir.join("comm"))
        .ok()?
        .trim_end_matches('\n')
        .to_string();
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mappings = read_mappings(proc_root, pid, cache).unwrap_or_default();
    Some(Process {
        facts: ProcessFacts {
            pid,
            comm,
            exe,
            cgroup_id: 0,
        },
        start_time,
        mappings,
        idle_collections: 0,
    })
}

/// The executable mappings of `pid`, sorted by address.
pub(crate) fn read_mappings(
    proc_root: &Path,
    pid: u32,
    cache: &mut ObjectCache,
) -> Option<Vec<Mapping>> {
    let text = std::fs::read_to_string(proc_root.join(format!("{pid}/maps"))).ok()?;
    let mut mappings: Vec<Mapping> = parse_maps(&text)
        .into_iter()
        .filter(|l| l.executable)
        .map(|l| {
            let object = (l.inode != 0 && l.path.starts_with('/'))
                .then(|| cache.get_or_open(proc_root, pid, &l))
                .flatten();
            Mapping {
                start: l.start,
                end: l.end,
                offset: l.offset,
                path: l.path,
                object,
            }
        })
        .collect();
    mappings.sort_by_key(|m| m.start);
    Some(mappings)
}

/// Whether the process `pid` that started at `start_time` still runs.
pub(crate) fn is_alive(proc_root: &Path, pid: u32, start_time: Option<u64>) -> bool {
    match std::fs::read_to_string(proc_root.join(format!("{pid}/stat"))) {
        Ok(stat) => start_time.is_none() || parse_stat_start_time(&stat) == start_time,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_with_spaces_in_paths_and_anonymous_memory() {
        let text = "\
55d0c0a00000-55d0c0a21000 r-xp 00001000 fd:01 1234                       /usr/bin/my prog
7ffd1e9f2000-7ffd1e9f4000 r-xp 00000000 00:00 0                          [vdso]
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
garbage
";
        let lines = parse_maps(text);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            MapsLine {
                start: 0x55d0c0a00000,
                end: 0x55d0c0a21000,
                executable: true,
                offset: 0x1000,
                dev: "fd:01".into(),
                inode: 1234,
                path: "/usr/bin/my prog".into(),
            }
        );
        assert_eq!(lines[1].path, "[vdso]");
        assert!(!lines[2].executable);
        assert_eq!(lines[2].path, "");
    }

    #[test]
    fn start_time_is_read_after_a_comm_with_parentheses() {
        let stat = "42 (a) b) R 1 42 42 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 98765 1000 50";
        assert_eq!(parse_stat_start_time(stat), Some(98765));
        assert_eq!(parse_stat_start_time("42 (x"), None);
    }

    #[test]
    fn facts_become_meta_labels() {
        let f = ProcessFacts {
            pid: 7,
            comm: "spin".into(),
            exe: Some("/bin/spin".into()),
            cgroup_id: 1,
        };
        let l = f.meta_labels();
        assert_eq!(l["__meta_process_pid"], "7");
        assert_eq!(l["__meta_process_comm"], "spin");
        assert_eq!(l["__meta_process_exe"], "/bin/spin");
    }
}
