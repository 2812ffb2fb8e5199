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

/// How much the symboliser may hold, in estimated bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The answers cached (function names and files per address).
    pub cache_bytes: usize,
    /// The files blazesym holds parsed, counted by their size (their symbol tables and DWARF
    /// take about as much memory, and the mapped file's pages count in the RSS too).
    pub loaded_bytes: u64,
}

/// A file's cached answers.
#[derive(Debug, Default)]
struct FileCache {
    frames: HashMap<u64, Frames>,
    bytes: usize,
    /// The generation (collection) that last used it.
    used: u64,
}

/// A file blazesym holds parsed.
#[derive(Debug)]
struct Loaded {
    bytes: u64,
    used: u64,
}

/// The blazesym symboliser and the cache of what it answered, both bounded by size. What is
/// evicted is only what a collection already turned into frames: the files stay open (the
/// processes' mappings hold them) and are parsed again when a later sample needs them, so a
/// process's samples are symbolised whatever was evicted in between.
pub(crate) struct Symbols {
    /// One for the process's life: blazesym keeps each file's parsed tables (and its mapping)
    /// until the file is evicted. (Dropping a blazesym symboliser after each period was tried:
    /// its mappings stayed, so it leaked.)
    symbolizer: Symbolizer,
    /// Symboliser path of a file -> its answers.
    user: HashMap<PathBuf, FileCache>,
    kernel: HashMap<u64, Frames>,
    kernel_bytes: usize,
    cached_bytes: usize,
    loaded: HashMap<PathBuf, Loaded>,
    loaded_bytes: u64,
    budget: Budget,
    generation: u64,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("cached_bytes", &self.cached_bytes)
            .field("loaded_bytes", &self.loaded_bytes)
            .finish_non_exhaustive()
    }
}

/// Estimated heap bytes of one cached answer (the map entry, the `Arc`, the strings).
fn frames_bytes(f: &Frames) -> usize {
    64 + f
        .iter()
        .map(|x| {
            std::mem::size_of::<FrameFn>() + x.name.len() + x.file.as_ref().map_or(0, String::len)
        })
        .sum::<usize>()
}

impl Symbols {
    /// A symboliser within `budget`.
    pub fn new(budget: Budget) -> Self {
        Self {
            symbolizer: new_symbolizer(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            kernel_bytes: 0,
            cached_bytes: 0,
            loaded: HashMap::new(),
            loaded_bytes: 0,
            budget,
            generation: 0,
        }
    }

    /// Starts a collection: what it uses is kept in preference to what earlier ones used.
    pub fn next_generation(&mut self) {
        self.generation += 1;
    }

    /// Bytes of cached answers and of files held parsed.
    #[cfg(test)]
    pub fn held(&self) -> (usize, u64) {
        (self.cached_bytes, self.loaded_bytes)
    }

    /// Drops cached answers, least recently used files first, until `more` bytes fit; answers
    /// of the current collection go last (the caller already holds them).
    fn make_room(&mut self, more: usize) {
        if self.cached_bytes + more <= self.budget.cache_bytes {
            return;
        }
        let mut files: Vec<(u64, PathBuf)> =
            self.user.iter().map(|(p, c)| (c.used, p.clone())).collect();
        files.sort();
        for (_, p) in files {
            if self.cached_bytes + more <= self.budget.cache_bytes {
                return;
            }
            if let Some(c) = self.user.remove(&p) {
                self.cached_bytes = self.cached_bytes.saturating_sub(c.bytes);
            }
        }
        self.cached_bytes = self.cached_bytes.saturating_sub(self.kernel_bytes);
        self.kernel.clear();
        self.kernel_bytes = 0;
    }

    /// Notes that blazesym parsed `path` (of `bytes`), and unloads the least recently used
    /// other files while the loaded total is over budget.
    fn loaded(&mut self, path: &Path, bytes: u64) {
        let generation = self.generation;
        match self.loaded.get_mut(path) {
            Some(l) => l.used = generation,
            None => {
                self.loaded.insert(
                    path.to_path_buf(),
                    Loaded {
                        bytes,
                        used: generation,
                    },
                );
                self.loaded_bytes += bytes;
            }
        }
        if self.loaded_bytes <= self.budget.loaded_bytes {
            return;
        }
        let mut files: Vec<(u64, PathBuf)> = self
            .loaded
            .iter()
            .filter(|(p, _)| p.as_path() != path)
            .map(|(p, l)| (l.used, p.clone()))
            .collect();
        files.sort();
        for (_, p) in files {
            if self.loaded_bytes <= self.budget.loaded_bytes {
                break;
            }
            self.unload(&p);
        }
    }

    fn unload(&mut self, path: &Path) {
        if let Some(l) = self.loaded.remove(path) {
            self.loaded_bytes = self.loaded_bytes.saturating_sub(l.bytes);
        }
        let _ = self
            .symbolizer
            .evict(&blazesym::symbolize::evict::Evict::from(
                blazesym::symbolize::evict::Elf::new(path),
            ));
    }

    /// Frames of `offsets` (file offsets) in the ELF file at `path` (`size` bytes), with its
    /// DWARF when `debug_syms`.
    pub fn user(
        &mut self,
        path: &Path,
        offsets: &[u64],
        debug_syms: bool,
        size: u64,
    ) -> Vec<Frames> {
        let missing: Vec<u64> = {
            let cache = self.user.get(path);
            let mut m: Vec<u64> = offsets
                .iter()
                .copied()
                .filter(|o| cache.is_none_or(|c| !c.frames.contains_key(o)))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        let mut out = HashMap::new();
        if !missing.is_empty() {
            let mut elf = Elf::new(path);
            elf.debug_syms = debug_syms;
            let src = Source::Elf(elf);
            let found = self
                .symbolizer
                .symbolize(&src, Input::FileOffset(&missing))
                .unwrap_or_default();
            let answers: Vec<(u64, Frames)> = missing
                .iter()
                .enumerate()
                .map(|(i, off)| {
                    (
                        *off,
                        found.get(i).map(frames).unwrap_or_else(|| Arc::from([])),
                    )
                })
                .collect();
            drop(found);
            self.loaded(path, size);
            let bytes: usize = answers.iter().map(|(_, f)| frames_bytes(f)).sum();
            self.make_room(bytes);
            let generation = self.generation;
            let cache = self.user.entry(path.to_path_buf()).or_default();
            for (off, f) in answers {
                out.insert(off, Arc::clone(&f));
                cache.frames.insert(off, f);
            }
            cache.bytes += bytes;
            cache.used = generation;
            self.cached_bytes += bytes;
        }
        let generation = self.generation;
        let cache = self.user.get_mut(path).map(|c| {
            c.used = generation;
            &*c
        });
        offsets
            .iter()
            .map(|o| {
                cache
                    .and_then(|c| c.frames.get(o))
                    .or_else(|| out.get(o))
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
        let mut out = HashMap::new();
        if !missing.is_empty() {
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
            let answers: Vec<(u64, Frames)> = missing
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    (
                        *a,
                        found.get(i).map(frames).unwrap_or_else(|| Arc::from([])),
                    )
                })
                .collect();
            drop(found);
            let bytes: usize = answers.iter().map(|(_, f)| frames_bytes(f)).sum();
            self.make_room(bytes);
            for (a, f) in answers {
                out.insert(a, Arc::clone(&f));
                self.kernel.insert(a, f);
            }
            self.kernel_bytes += bytes;
            self.cached_bytes += bytes;
        }
        addrs
            .iter()
            .map(|a| {
                self.kernel
                    .get(a)
                    .or_else(|| out.get(a))
                    .cloned()
                    .unwrap_or_else(|| Arc::from([]))
            })
            .collect()
    }

    /// Forgets what was read from files about to be closed (their fd numbers will be reused).
    pub fn evict(&mut self, paths: &[PathBuf]) {
        for p in paths {
            if let Some(c) = self.user.remove(p) {
                self.cached_bytes = self.cached_bytes.saturating_sub(c.bytes);
            }
            self.unload(p);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[inline(never)]
    fn a_named_function() -> u64 {
        std::hint::black_box(42)
    }

    /// The file offset of `addr` in this test binary.
    fn own_offset(addr: u64) -> (PathBuf, u64) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let m = crate::process::parse_maps(&maps)
            .into_iter()
            .find(|m| m.start <= addr && addr < m.end)
            .unwrap();
        (PathBuf::from(m.path), addr - m.start + m.offset)
    }

    #[test]
    fn files_beyond_the_budget_are_unloaded_and_still_answer_when_asked_again() {
        let _ = a_named_function();
        let (exe, offset) = own_offset(a_named_function as *const () as usize as u64);
        let size = std::fs::metadata(&exe).unwrap().len();
        let other = PathBuf::from("/proc/self/exe"); // the same file under a second name
        let mut s = Symbols::new(Budget {
            cache_bytes: 1 << 20,
            loaded_bytes: size,
        });
        let named = |f: &Frames| f.iter().any(|x| x.name.contains("a_named_function"));

        s.next_generation();
        let first = s.user(&exe, &[offset], false, size);
        assert!(named(&first[0]), "{first:?}");
        assert_eq!(s.held().1, size);

        // A second file within the same budget unloads the first...
        s.next_generation();
        let _ = s.user(&other, &[offset], false, size);
        assert_eq!(s.held().1, size, "only one file fits");
        // ...whose answers are still cached, and parsed again once the cache is gone.
        assert!(named(&s.user(&exe, &[offset], false, size)[0]));
        s.evict(std::slice::from_ref(&exe));
        assert!(named(&s.user(&exe, &[offset], false, size)[0]));
        assert!(s.held().1 <= size);
    }

    #[test]
    fn the_answer_cache_stays_within_its_bytes() {
        let (exe, offset) = own_offset(a_named_function as *const () as usize as u64);
        let size = std::fs::metadata(&exe).unwrap().len();
        let mut s = Symbols::new(Budget {
            cache_bytes: 4 << 10,
            loaded_bytes: u64::MAX,
        });
        for round in 0..50u64 {
            s.next_generation();
            let offsets: Vec<u64> = (0..20).map(|i| offset + round * 20 + i).collect();
            let got = s.user(&exe, &offsets, false, size);
            assert_eq!(got.len(), offsets.len());
            // At most the budget plus what the current call just added.
            assert!(s.held().0 <= (4 << 10) + 20 * 1024, "{:?}", s.held());
        }
    }
}
