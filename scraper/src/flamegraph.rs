//! Flame graphs of stored profiles, for `kubeprof-scraper flamegraph` and the profile browser
//! (`/ui`): one profile, several merged, or the difference between two sets (red: more in the
//! newer set, blue: less). An empty profile renders as an SVG that says so, since an idle
//! process's CPU profile is legitimately empty.

use std::{collections::BTreeMap, io::Write};

use kubeprof_pprof::{self as pprof, DecodeLimits, Profile, string};

/// Why a profile could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    /// Not a readable profile.
    #[error("not a pprof profile: {0}")]
    Decode(#[from] pprof::DecodeError),
    /// A profile with broken references.
    #[error("invalid profile: {0}")]
    Invalid(#[from] pprof::ValidateError),
    /// The sample type asked for does not exist.
    #[error("no sample type {wanted:?}; the profile has: {available}")]
    NoSuchSampleType {
        /// Asked for.
        wanted: String,
        /// What exists.
        available: String,
    },
    /// Nothing to draw.
    #[error("the profile has no samples of type {0}")]
    Empty(String),
    /// Writing the SVG failed.
    #[error("cannot render: {0}")]
    Render(#[from] std::io::Error),
}

/// Decodes (gzip or raw) and validates a stored profile.
pub fn decode(body: &[u8], limits: &DecodeLimits) -> Result<Profile, FlamegraphError> {
    let profile = pprof::decode(body, limits)?;
    pprof::validate(&profile)?;
    Ok(profile)
}

/// The names of the profile's sample types, in order.
pub fn sample_types(p: &Profile) -> Vec<String> {
    p.sample_type
        .iter()
        .map(|vt| string(p, vt.r#type).to_owned())
        .collect()
}

/// The default sample type: what `go tool pprof` shows first for the usual Go profiles.
fn default_index(p: &Profile) -> usize {
    let names = sample_types(p);
    for preferred in ["cpu", "inuse_space", "delay", "goroutine"] {
        if let Some(i) = names.iter().position(|n| n == preferred) {
            return i;
        }
    }
    names.len().saturating_sub(1)
}

/// Stacks of one sample type, summed over one or more profiles: `root;...;leaf` -> value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    /// The sample type, e.g. `cpu`.
    pub sample_type: String,
    /// Its unit, e.g. `nanoseconds`.
    pub unit: String,
    /// Folded stacks and their values (only positive values).
    pub stacks: BTreeMap<String, i64>,
    /// Profiles merged.
    pub profiles: usize,
}

/// One function's share of a [`Folded`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCost {
    /// The function.
    pub name: String,
    /// Value of the stacks where it is the leaf.
    pub self_value: i64,
    /// Value of the stacks it appears in (once per stack, so recursion is not counted twice).
    pub total_value: i64,
}

impl Folded {
    /// `cpu (nanoseconds)`.
    pub fn title(&self) -> String {
        format!("{} ({})", self.sample_type, self.unit)
    }

    /// Sum of all stacks.
    pub fn total(&self) -> i64 {
        self.stacks.values().fold(0i64, |a, v| a.saturating_add(*v))
    }

    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Lines in the folded format (`a;b;c 42`).
    pub fn lines(&self) -> Vec<String> {
        self.stacks
            .iter()
            .map(|(s, v)| format!("{s} {v}"))
            .collect()
    }

    /// The `n` functions with the highest self value (ties: highest total, then name).
    pub fn top_functions(&self, n: usize) -> Vec<FunctionCost> {
        let mut by_name: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (stack, v) in &self.stacks {
            let frames: Vec<&str> = stack.split(';').collect();
            if let Some(leaf) = frames.last() {
                by_name.entry(leaf).or_default().0 += v;
            }
            let mut seen = std::collections::BTreeSet::new();
            for f in frames {
                if seen.insert(f) {
                    by_name.entry(f).or_default().1 += v;
                }
            }
        }
        let mut all: Vec<FunctionCost> = by_name
            .into_iter()
            .map(|(name, (self_value, total_value))| FunctionCost {
                name: name.to_owned(),
                self_value,
                total_value,
            })
            .collect();
        all.sort_by(|a, b| {
            (b.self_value, b.total_value)
                .cmp(&(a.self_value, a.total_value))
                .then_with(|| a.name.cmp(&b.name))
        });
        all.truncate(n);
        all
    }
}

fn index_of(p: &Profile, wanted: &str) -> Result<usize, FlamegraphError> {
    p.sample_type
        .iter()
        .position(|vt| string(p, vt.r#type) == wanted)
        .ok_or_else(|| FlamegraphError::NoSuchSampleType {
            wanted: wanted.to_owned(),
            available: sample_types(p).join(", "),
        })
}

/// Adds the stacks of `p`'s sample type `index` to `into`.
fn add_stacks(p: &Profile, index: usize, into: &mut BTreeMap<String, i64>) {
    let functions: BTreeMap<u64, &str> = p
        .function
        .iter()
        .map(|f| (f.id, string(p, f.name)))
        .collect();
    let locations: BTreeMap<u64, Vec<&str>> = p
        .location
        .iter()
        .map(|l| {
            // Lines are leaf-first (inlined callee first).
            let names = l
                .line
                .iter()
                .map(|line| functions.get(&line.function_id).copied().unwrap_or("?"))
                .collect();
            (l.id, names)
        })
        .collect();
    for s in &p.sample {
        let value = s.value.get(index).copied().unwrap_or(0);
        if value <= 0 {
            continue;
        }
        let mut frames: Vec<&str> = Vec::new();
        for id in s.location_id.iter().rev() {
            if let Some(names) = locations.get(id) {
                frames.extend(names.iter().rev());
            }
        }
        // `;` separates frames and a trailing ` N` is the count: neither may appear in a name.
        let stack = frames
            .iter()
            .map(|f| f.replace(';', ":").replace(['\n', '\r'], " "))
            .collect::<Vec<_>>()
            .join(";");
        let e = into
            .entry(if stack.is_empty() {
                "[unknown]".into()
            } else {
                stack
            })
            .or_default();
        *e = e.saturating_add(value);
    }
}

impl Folded {
    /// An empty sum of `sample_type` (default: `p`'s default type), to [`Folded::add`] `p`
    /// and more profiles to.
    pub fn for_profile(p: &Profile, sample_type: Option<&str>) -> Result<Self, FlamegraphError> {
        let index = match sample_type {
            Some(wanted) => index_of(p, wanted)?,
            None => default_index(p),
        };
        let vt = p.sample_type.get(index);
        Ok(Self {
            sample_type: vt.map(|vt| string(p, vt.r#type)).unwrap_or("").to_owned(),
            unit: vt.map(|vt| string(p, vt.unit)).unwrap_or("").to_owned(),
            ..Default::default()
        })
    }

    /// Whether `p` has this sum's sample type.
    pub fn accepts(&self, p: &Profile) -> bool {
        index_of(p, &self.sample_type).is_ok()
    }

    /// Adds the stacks of `p` (which must have this sum's sample type). One profile at a
    /// time, so that merging many holds one decoded profile in memory, not all of them.
    pub fn add(&mut self, p: &Profile) -> Result<(), FlamegraphError> {
        let index = index_of(p, &self.sample_type)?;
        add_stacks(p, index, &mut self.stacks);
        self.profiles += 1;
        Ok(())
    }
}

/// Folds and sums `profiles` for `sample_type` (default: the first profile's default type).
/// Profiles without that sample type are an error, as their values could not be compared.
pub fn fold_all(
    profiles: &[Profile],
    sample_type: Option<&str>,
) -> Result<Folded, FlamegraphError> {
    let Some(first) = profiles.first() else {
        return Ok(Folded::default());
    };
    let mut folded = Folded::for_profile(first, sample_type)?;
    for p in profiles {
        folded.add(p)?;
    }
    Ok(folded)
}

/// Folded stacks (`root;...;leaf value`, one per line) of `sample_type` (default: see above),
/// with the title; an empty profile is an error.
pub fn fold(
    p: &Profile,
    sample_type: Option<&str>,
) -> Result<(String, Vec<String>), FlamegraphError> {
    let folded = fold_all(std::slice::from_ref(p), sample_type)?;
    if folded.is_empty() {
        return Err(FlamegraphError::Empty(folded.title()));
    }
    Ok((folded.title(), folded.lines()))
}

fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An SVG that says there is nothing to draw, and why that is often expected.
pub fn write_empty_svg(
    title: &str,
    explanation: &str,
    mut out: impl Write,
) -> Result<(), FlamegraphError> {
    write!(
        out,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" viewBox="0 0 1200 120" xmlns="http://www.w3.org/2000/svg" data-empty="true">
<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>
<text x="600" y="40" font-family="Verdana" font-size="17" text-anchor="middle">{}</text>
<text x="600" y="80" font-family="Verdana" font-size="13" text-anchor="middle">{}</text>
</svg>
"##,
        escape_xml(title),
        escape_xml(explanation)
    )?;
    Ok(())
}

/// What an empty flame graph says below its title.
pub const EMPTY_EXPLANATION: &str =
    "empty profile: no samples of this type (an idle process has an empty CPU profile)";

fn options(
    title: String,
    unit: &str,
    subtitle: Option<String>,
) -> inferno::flamegraph::Options<'static> {
    let mut options = inferno::flamegraph::Options::default();
    // Frames read "main.work (1234 nanoseconds, 5%)".
    options.count_name = unit.to_owned();
    options.title = title;
    options.subtitle = subtitle;
    options
}

/// Renders `folded` as an interactive SVG (search, zoom); an empty one as [`write_empty_svg`].
pub fn render_folded(
    folded: &Folded,
    subtitle: Option<String>,
    out: impl Write,
) -> Result<(), FlamegraphError> {
    if folded.is_empty() {
        return write_empty_svg(
            &format!("{}: empty", folded.title()),
            EMPTY_EXPLANATION,
            out,
        );
    }
    let lines = folded.lines();
    let mut options = options(folded.title(), &folded.unit, subtitle);
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| FlamegraphError::Render(std::io::Error::other(e.to_string())))
}

/// Renders the difference from `base` to `folded`, drawn with `folded`'s stacks: red frames
/// grew, blue ones shrank. With `normalize`, `base` is scaled to `folded`'s total first, so
/// sets of different lengths compare by share rather than by sum.
pub fn render_diff(
    base: &Folded,
    folded: &Folded,
    normalize: bool,
    subtitle: Option<String>,
    out: impl Write,
) -> Result<(), FlamegraphError> {
    if base.is_empty() && folded.is_empty() {
        return write_empty_svg(
            &format!("{}: both sides empty", folded.title()),
            EMPTY_EXPLANATION,
            out,
        );
    }
    let before = base.lines().join("\n");
    let after = folded.lines().join("\n");
    let mut diff = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options {
            normalize,
            strip_hex: false,
        },
        before.as_bytes(),
        after.as_bytes(),
        &mut diff,
    )?;
    let diff = String::from_utf8_lossy(&diff);
    let mut lines: Vec<&str> = diff.lines().collect();
    // The differential's order is a hash map's: sorted, the SVG is the same for the same input.
    lines.sort_unstable();
    let mut options = options(
        format!("{} difference", folded.title()),
        &folded.unit,
        subtitle,
    );
    inferno::flamegraph::from_lines(&mut options, lines, out)
        .map_err(|e| FlamegraphError::Render(std::io::Error::other(e.to_string())))
}

/// Renders the profile in `body` (gzip or raw pprof) as an SVG into `out`; an empty profile
/// renders as an SVG that says so (see [`render_folded`]).
pub fn render(
    body: &[u8],
    sample_type: Option<&str>,
    out: impl Write,
) -> Result<(), FlamegraphError> {
    let profile = decode(body, &DecodeLimits::default())?;
    let folded = fold_all(std::slice::from_ref(&profile), sample_type)?;
    render_folded(&folded, None, out)
}

/// What [`render_profiles`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    /// The graph's title, e.g. `cpu (nanoseconds)`.
    pub title: String,
    /// Nothing to draw: the SVG says so.
    pub empty: bool,
}

/// `kubeprof-scraper flamegraph`: the SVG of `profiles` merged, or, with a `base`, of the
/// difference from `base` (merged) to `profiles`.
pub fn render_profiles(
    profiles: &[Profile],
    base: &[Profile],
    sample_type: Option<&str>,
    normalize: bool,
    out: impl Write,
) -> Result<Written, FlamegraphError> {
    let folded = fold_all(profiles, sample_type)?;
    if base.is_empty() {
        render_folded(&folded, None, out)?;
        return Ok(Written {
            title: folded.title(),
            empty: folded.is_empty(),
        });
    }
    let base_folded = fold_all(base, Some(&folded.sample_type))?;
    render_diff(&base_folded, &folded, normalize, None, out)?;
    Ok(Written {
        title: folded.title(),
        empty: folded.is_empty() && base_folded.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(pairs: &[(&str, i64)]) -> Folded {
        Folded {
            sample_type: "cpu".into(),
            unit: "nanoseconds".into(),
            stacks: pairs.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
            profiles: 1,
        }
    }

    #[test]
    fn top_functions_count_self_and_total_once_per_stack() {
        let f = folded(&[("main;a;a;hot", 70), ("main;a", 20), ("main;b", 10)]);
        let top = f.top_functions(10);
        assert_eq!(top[0].name, "hot");
        assert_eq!((top[0].self_value, top[0].total_value), (70, 70));
        let a = top.iter().find(|c| c.name == "a").unwrap();
        // Recursive a;a is counted once.
        assert_eq!((a.self_value, a.total_value), (20, 90));
        let main = top.iter().find(|c| c.name == "main").unwrap();
        assert_eq!((main.self_value, main.total_value), (0, 100));
        assert_eq!(f.total(), 100);
    }

    #[test]
    fn an_empty_profile_renders_an_svg_that_says_so() {
        let mut out = Vec::new();
        render_folded(&folded(&[]), None, &mut out).unwrap();
        let svg = String::from_utf8_lossy(&out);
        assert!(svg.contains("cpu (nanoseconds): empty"), "{svg}");
        assert!(svg.contains("data-empty"));
    }

    #[test]
    fn the_diff_marks_growth_and_shrinkage() {
        let base = folded(&[("main;grows", 10), ("main;shrinks", 90)]);
        let new = folded(&[("main;grows", 90), ("main;shrinks", 10)]);
        let mut out = Vec::new();
        render_diff(&base, &new, false, None, &mut out).unwrap();
        let svg = String::from_utf8_lossy(&out);
        // inferno colours growth red (rgb(255,..)) and shrinkage blue (rgb(..,255)); the
        // titles carry the change in percent.
        let frame = |name: &str| {
            let at = svg.find(&format!("<title>{name} ")).unwrap();
            svg[at..]
                .split("</g>")
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(frame("grows").contains("+80"), "{}", frame("grows"));
        assert!(frame("grows").contains("rgb(255,"), "{}", frame("grows"));
        assert!(frame("shrinks").contains("-80"), "{}", frame("shrinks"));
        assert!(frame("shrinks").contains(",255)"), "{}", frame("shrinks"));
    }

    #[test]
    fn function_names_are_escaped_in_the_svg() {
        let f = folded(&[("main;<script>alert(1)</script>", 10)]);
        let mut out = Vec::new();
        render_folded(&f, None, &mut out).unwrap();
        let svg = String::from_utf8_lossy(&out);
        assert!(!svg.contains("<script>alert"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert"));
    }
}
