//! The differential flame graph of two ranges: red frames take more in the newer range, blue
//! ones less.

use std::collections::BTreeMap;

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;

use super::{Loaded, PageError, Selection, load, ms_time, select, sink_root, svg_response};
use crate::{
    flamegraph::{self, Folded},
    ui::{
        UiState,
        html::{self, Html},
    },
};

/// Two ranges of one service and type.
#[derive(Clone, Debug, Deserialize)]
pub struct DiffQuery {
    sink: String,
    service: String,
    #[serde(rename = "type")]
    kind: String,
    base_from: Option<String>,
    base_to: Option<String>,
    from: Option<String>,
    to: Option<String>,
    sample_type: Option<String>,
    normalize: Option<bool>,
}

impl DiffQuery {
    fn side(&self, base: bool) -> Selection {
        let (from, to) = if base {
            (self.base_from.clone(), self.base_to.clone())
        } else {
            (self.from.clone(), self.to.clone())
        };
        Selection {
            sink: self.sink.clone(),
            service: self.service.clone(),
            kind: self.kind.clone(),
            at: None,
            from,
            to,
            sample_type: self.sample_type.clone(),
            s: None,
        }
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("sink", self.sink.clone()),
            ("service", self.service.clone()),
            ("type", self.kind.clone()),
            ("base_from", o(&self.base_from)),
            ("base_to", o(&self.base_to)),
            ("from", o(&self.from)),
            ("to", o(&self.to)),
            ("sample_type", o(&self.sample_type)),
            ("normalize", self.normalize.unwrap_or(false).to_string()),
        ]
    }
}

struct Sides {
    base: std::sync::Arc<Loaded>,
    new: std::sync::Arc<Loaded>,
    base_count: usize,
    new_count: usize,
    range: String,
}

async fn sides(state: &UiState, q: &DiffQuery) -> Result<Sides, PageError> {
    let root = sink_root(state, &q.sink)?;
    let mut new_sel = q.side(false);
    let (new_chosen, _) = select(&root, &new_sel)?;
    let new = load(state, &root, &new_sel, &new_chosen).await?;
    // Both sides are drawn in the newer side's sample type.
    new_sel.sample_type = Some(new.folded.sample_type.clone());
    let mut base_sel = q.side(true);
    base_sel.sample_type = new_sel.sample_type.clone();
    let (base_chosen, _) = select(&root, &base_sel)?;
    let base = load(state, &root, &base_sel, &base_chosen).await?;
    let span = |c: &[crate::ui::store::Stored]| match (c.last(), c.first()) {
        (Some(a), Some(b)) if a.ms == b.ms => ms_time(a.ms),
        (Some(a), Some(b)) => format!("{} … {}", ms_time(a.ms), ms_time(b.ms)),
        _ => String::new(),
    };
    Ok(Sides {
        range: format!(
            "base {} ({} profiles) → {} ({} profiles)",
            span(&base_chosen),
            base_chosen.len(),
            span(&new_chosen),
            new_chosen.len()
        ),
        base_count: base_chosen.len(),
        new_count: new_chosen.len(),
        base,
        new,
    })
}

/// `GET /ui/diff.svg`.
pub async fn diff_svg(
    State(state): State<UiState>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, PageError> {
    let s = sides(&state, &q).await?;
    let mut svg = Vec::new();
    flamegraph::render_diff(
        &s.base.folded,
        &s.new.folded,
        q.normalize.unwrap_or(false),
        Some(format!("{} · {}", q.service, s.range)),
        &mut svg,
    )
    .map_err(|e| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(svg_response(svg))
}

/// A function's self value on both sides.
#[derive(Debug, PartialEq)]
pub struct Change {
    /// The function.
    pub name: String,
    /// Self value in the base (scaled when normalized).
    pub base: i64,
    /// Self value in the newer range.
    pub new: i64,
}

/// Functions whose self value changed most, largest change first.
pub fn changes(base: &Folded, new: &Folded, normalize: bool, n: usize) -> Vec<Change> {
    let scale = if normalize && base.total() > 0 {
        new.total() as f64 / base.total() as f64
    } else {
        1.0
    };
    let mut by_name: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for f in base.top_functions(usize::MAX) {
        by_name.entry(f.name).or_default().0 = (f.self_value as f64 * scale) as i64;
    }
    for f in new.top_functions(usize::MAX) {
        by_name.entry(f.name).or_default().1 = f.self_value;
    }
    let mut all: Vec<Change> = by_name
        .into_iter()
        .filter(|(_, (b, n))| b != n)
        .map(|(name, (base, new))| Change { name, base, new })
        .collect();
    all.sort_by(|a, b| {
        (b.new - b.base)
            .abs()
            .cmp(&(a.new - a.base).abs())
            .then_with(|| a.name.cmp(&b.name))
    });
    all.truncate(n);
    all
}

/// `GET /ui/diff`: the page.
pub async fn diff_page(
    State(state): State<UiState>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, PageError> {
    let s = sides(&state, &q).await?;
    let normalize = q.normalize.unwrap_or(false);
    let pairs = q.pairs();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut h = Html::default();
    h.raw("<p>")
        .link("/ui", "Profiles")
        .raw(" › ")
        .link(
            &html::query(
                "/ui/profiles",
                &[
                    ("sink", &q.sink),
                    ("service", &q.service),
                    ("type", &q.kind),
                ],
            ),
            format!("{} · {}", q.service, q.kind),
        )
        .raw("</p>");
    h.el("p", "selection", &s.range);
    h.el(
        "p",
        "legend",
        format!(
            "Drawn with the newer range's stacks: red frames take more than in the base, blue ones less{}. Totals: base {} → {} {}.",
            if normalize {
                " (the base scaled to the same total)"
            } else {
                ""
            },
            s.base.folded.total(),
            s.new.folded.total(),
            s.new.folded.unit
        ),
    );
    if s.base_count == 0 || s.new_count == 0 {
        h.el("p", "error", "One side holds no profile.");
    }
    h.raw("<object class=\"flame\" type=\"image/svg+xml\" data=\"")
        .text(html::query("/ui/diff.svg", &refs))
        .raw("\"></object>");
    h.raw("<h2>Largest changes (self)</h2><table class=\"top\"><thead><tr><th>base</th><th>now</th><th>change</th><th>function</th></tr></thead><tbody>");
    for c in changes(&s.base.folded, &s.new.folded, normalize, 30) {
        let class = if c.new > c.base { "more" } else { "less" };
        h.raw("<tr class=\"change ")
            .raw(class)
            .raw("\"><td>")
            .text(c.base.to_string())
            .raw("</td><td>")
            .text(c.new.to_string())
            .raw("</td><td>")
            .text(format!("{:+}", c.new - c.base))
            .raw("</td><td>")
            .text(&c.name)
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    Ok(html::page(
        &format!("{} · {} difference", q.service, q.kind),
        "Profiles",
        h,
    ))
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
    fn changes_rank_by_size_and_normalize_the_base() {
        let base = folded(&[("main;a", 50), ("main;b", 50)]);
        let new = folded(&[("main;a", 150), ("main;b", 50)]);
        let c = changes(&base, &new, false, 10);
        assert_eq!(
            c,
            vec![Change {
                name: "a".into(),
                base: 50,
                new: 150
            }]
        );
        // Scaled to 200 in all, the base has a=100, b=100: a grew by 50, b shrank by 50.
        let c = changes(&base, &new, true, 10);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].base, c[0].new), (100, 150));
        assert_eq!((c[1].base, c[1].new), (100, 50));
    }
}
