//! Addresses -> function names, files and lines, with blazesym: ELF symbols and DWARF of the
//! mapped files (Rust and C++ names demangled; Go through its `.symtab`), the kernel through
//! `/proc/kallsyms`. Results are cached per file and address, bounded.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

/// One function of a frame (a frame holds several when functions were inlined).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FrameFn {
    pub name: String,
    pub file: Option<String>,
    pub line: u32,
}

/// The functions at one address, innermost (inlined) first; empty when unnamed.
pub(crate) type Frames = Arc<[FrameFn]>;

/// The blazesym symboliser and the cache of what it answered.
pub(crate) struct Symbols {
    /// One for the process's life: blazesym keeps each file's parsed tables (and its mapping)
    /// until the file is evicted, when the last process mapping it is forgotten. (Dropping a
    /// blazesym symboliser after each period was tried: its mappings stayed, so it leaked.)
    symbolizer: Symbolizer,
    /// Symboliser path of a file -> file offset -> frames.
    user: HashMap<PathBuf, HashMap<u64, Frames>>,
    kernel: HashMap<u64, Frames>,
    cached: usize,
    max_cached: usize,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

impl Symbols {
    /// A symboliser caching at most `max_cached` addresses.
    pub fn new(max_cached: usize) -> Self {
        Self {
            symbolizer: new_symbolizer(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            cached: 0,
            max_cached,
        }
    }

    fn make_room(&mut self, more: usize) {
        if self.cached + more > self.max_cached {
            // Crude but bounded: start over. Entries are rebuilt from blazesym's own caches.
            self.user.clear();
            self.kernel.clear();
            self.cached = 0;
        }
    }

    /// Frames of `offsets` (file offsets) in the ELF file at `path`, with its DWARF when
    /// `debug_syms`.
    pub fn user(&mut self, path: &Path, offsets: &[u64], debug_syms: bool) -> Vec<Frames> {
        let missing: Vec<u64> = {
            let cache = self.user.get(path);
            let mut m: Vec<u64> = offsets
                .iter()
                .copied()
                .filter(|o| cache.is_none_or(|c| !c.contains_key(o)))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            self.make_room(missing.len());
            let mut elf = Elf::new(path);
            elf.debug_syms = debug_syms;
            let src = Source::Elf(elf);
            let found = self
                .symbolizer
                .symbolize(&src, Input::FileOffset(&missing))
                .unwrap_or_default();
            let cache = self.user.entry(path.to_path_buf()).or_default();
            for (i, off) in missing.iter().enumerate() {
                cache.insert(
                    *off,
                    found.get(i).map(frames).unwrap_or_else(|| Arc::from([])),
                );
            }
            self.cached += missing.len();
        }
        let cache = self.user.get(path);
        offsets
            .iter()
            .map(|o| {
                cache
                    .and_then(|c| c.get(o))
                    .cloned()
                    .unwrap_or_else(|| Arc::from([]))
            })
            .collect()
    }

    /// Frames of kernel addresses.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Frames> {
        let mut missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.kernel.contains_key(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            self.make_room(missing.len());
            // kallsyms only: a vmlinux image found on disk may not match the running kernel.
            let kernel = Kernel {
                vmlinux: blazesym::MaybeDefault::None,
                debug_syms: false,
                ..Kernel::default()
            };
            let src = Source::Kernel(kernel);
            let found = self
                .symbolizer
                .symbolize(&src, Input::AbsAddr(&missing))
                .unwrap_or_default();
            for (i, a) in missing.iter().enumerate() {
                self.kernel.insert(
                    *a,
                    found.get(i).map(frames).unwrap_or_else(|| Arc::from([])),
                );
            }
            self.cached += missing.len();
        }
        addrs
            .iter()
            .map(|a| self.kernel.get(a).cloned().unwrap_or_else(|| Arc::from([])))
            .collect()
    }

    /// Forgets what was read from files about to be closed (their fd numbers will be reused).
    pub fn evict(&mut self, paths: &[PathBuf]) {
        for p in paths {
            if let Some(c) = self.user.remove(p) {
                self.cached = self.cached.saturating_sub(c.len());
            }
            let _ = self
                .symbolizer
                .evict(&blazesym::symbolize::evict::Evict::from(
                    blazesym::symbolize::evict::Elf::new(p),
                ));
        }
    }
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

fn frames(s: &Symbolized<'_>) -> Frames {
    let Symbolized::Sym(sym) = s else {
        return Arc::from([]);
    };
    let info = |c: Option<&blazesym::symbolize::CodeInfo<'_>>| -> (Option<String>, u32) {
        match c {
            Some(c) => (
                Some(c.to_path().to_string_lossy().into_owned()),
                c.line.unwrap_or(0),
            ),
            None => (None, 0),
        }
    };
    let mut out = Vec::with_capacity(1 + sym.inlined.len());
    for f in sym.inlined.iter().rev() {
        let (file, line) = info(f.code_info.as_ref());
        out.push(FrameFn {
            name: f.name.to_string(),
            file,
            line,
        });
    }
    let (file, line) = info(sym.code_info.as_deref());
    out.push(FrameFn {
        name: sym.name.to_string(),
        file,
        line,
    });
    Arc::from(out)
}
