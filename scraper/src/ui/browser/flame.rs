//! The flame graph of one stored profile or of a range merged, with its top functions.

use axum::{
    extract::{Query, State},
    response::Response,
};

use super::{PageError, Selection, download_link, load, ms_time, select, sink_root, svg_response};
use crate::{
    flamegraph,
    ui::{
        UiState,
        html::{self, Html},
        store,
    },
};

/// Rows of the top functions table.
const TOP: usize = 30;

fn selection_pairs(sel: &Selection) -> Vec<(&'static str, String)> {
    vec![
        ("sink", sel.sink.clone()),
        ("service", sel.service.clone()),
        ("type", sel.kind.clone()),
        ("at", sel.at.map(|a| a.to_string()).unwrap_or_default()),
        ("from", sel.from.clone().unwrap_or_default()),
        ("to", sel.to.clone().unwrap_or_default()),
        ("sample_type", sel.sample_type.clone().unwrap_or_default()),
    ]
}

fn link(path: &str, pairs: &[(&'static str, String)]) -> String {
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    html::query(path, &refs)
}

/// `GET /ui/flame.svg`: inferno's interactive SVG (click to zoom, Ctrl-F or `s=` to search).
pub async fn flame_svg(
    State(state): State<UiState>,
    Query(sel): Query<Selection>,
) -> Result<Response, PageError> {
    let root = sink_root(&state, &sel.sink)?;
    let (chosen, _) = select(&root, &sel)?;
    let loaded = load(&state, &root, &sel, &chosen).await?;
    let mut svg = Vec::new();
    let subtitle = match chosen.as_slice() {
        [one] => format!("{} · {}", sel.service, ms_time(one.ms)),
        many => format!("{} · {} profiles merged", sel.service, many.len()),
    };
    flamegraph::render_folded(&loaded.folded, Some(subtitle), &mut svg)
        .map_err(|e| PageError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(svg_response(svg))
}

/// `GET /ui/flame`: the flame graph page.
pub async fn flame_page(
    State(state): State<UiState>,
    Query(sel): Query<Selection>,
) -> Result<Response, PageError> {
    let root = sink_root(&state, &sel.sink)?;
    let (chosen, truncated) = select(&root, &sel)?;
    let loaded = load(&state, &root, &sel, &chosen).await?;
    let folded = &loaded.folded;
    let pairs = selection_pairs(&sel);
    let mut h = Html::default();
    h.raw("<p>")
        .link("/ui", "Profiles")
        .raw(" › ")
        .link(
            &html::query(
                "/ui/profiles",
                &[
                    ("sink", &sel.sink),
                    ("service", &sel.service),
                    ("type", &sel.kind),
                ],
            ),
            format!("{} · {}", sel.service, sel.kind),
        )
        .raw("</p>");
    let newest = chosen.first().map(|p| p.ms).unwrap_or_default();
    let oldest = chosen.last().map(|p| p.ms).unwrap_or_default();
    h.raw("<p class=\"selection\">");
    if chosen.len() == 1 {
        h.text(format!("One profile, taken {}. ", ms_time(newest)))
            .link(
                &download_link(&sel.sink, &sel.service, &sel.kind, newest),
                "Download .pb.gz",
            )
            .raw(" (opens in <code>go tool pprof</code>).");
    } else {
        h.text(format!(
            "{} profiles merged, taken {} … {}.",
            folded.profiles,
            ms_time(oldest),
            ms_time(newest)
        ));
    }
    if truncated {
        h.raw(" ").el(
            "b",
            "",
            format!(
                "The range holds more: only the newest {} are merged.",
                chosen.len()
            ),
        );
    }
    if loaded.skipped > 0 {
        h.raw(" ").el(
            "b",
            "",
            format!(
                "{} could not be read or lack this sample type.",
                loaded.skipped
            ),
        );
    }
    h.raw("</p>");
    if loaded.sample_types.len() > 1 {
        h.raw("<p class=\"sample-types\">Sample type: ");
        for t in &loaded.sample_types {
            if *t == folded.sample_type {
                h.el("b", "", t);
            } else {
                let mut p = pairs.clone();
                p.retain(|(k, _)| *k != "sample_type");
                p.push(("sample_type", t.clone()));
                h.link(&link("/ui/flame", &p), t);
            }
            h.raw(" ");
        }
        h.raw("</p>");
    }
    let total = folded.total();
    h.raw("<p>")
        .text(format!("Total: {} {}.", total, folded.unit));
    h.raw("</p>");
    h.raw("<form class=\"search\" method=\"get\" action=\"/ui/flame\">");
    for (k, v) in &pairs {
        if !v.is_empty() {
            h.raw("<input type=\"hidden\" name=\"")
                .text(k)
                .raw("\" value=\"")
                .text(v)
                .raw("\">");
        }
    }
    h.raw("<input type=\"search\" name=\"s\" placeholder=\"highlight functions matching (regex)\" value=\"")
        .text(sel.s.as_deref().unwrap_or(""))
        .raw("\"> <button>Search</button> <span class=\"muted\">Click a frame to zoom; Ctrl-F searches inside the graph.</span></form>");
    let mut svg_pairs = pairs.clone();
    svg_pairs.push(("s", sel.s.clone().unwrap_or_default()));
    h.raw("<object class=\"flame\" type=\"image/svg+xml\" data=\"")
        .text(link("/ui/flame.svg", &svg_pairs))
        .raw("\"></object>");
    if folded.is_empty() {
        h.el(
            "p",
            "muted empty",
            format!(
                "Empty: no samples of type {}. {}",
                folded.title(),
                "A CPU profile of an idle process has none; pick a range, or another type."
            ),
        );
    }
    h.raw("<h2>Top functions</h2><table class=\"top\"><thead><tr><th>self</th><th>self %</th><th>total</th><th>total %</th><th>function</th></tr></thead><tbody>");
    for f in folded.top_functions(TOP) {
        let mut p = pairs.clone();
        p.push(("s", regex_escape(&f.name)));
        h.raw("<tr class=\"function\"><td>")
            .text(f.self_value.to_string())
            .raw("</td><td>")
            .text(html::percent(f.self_value, total))
            .raw("</td><td>")
            .text(f.total_value.to_string())
            .raw("</td><td>")
            .text(html::percent(f.total_value, total))
            .raw("</td><td>")
            .link(&link("/ui/flame", &p), &f.name)
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    // The labels of the newest profile: for a range, its instances may differ.
    if let Ok(path) = store::profile_path(&root, &sel.service, &sel.kind, newest)
        && let Some(labels) = store::labels_of(&path)
    {
        h.raw("<h2>Labels</h2><div class=\"labels\">");
        for (k, v) in labels {
            h.raw("<span class=\"label\">")
                .text(k)
                .raw("=<b>")
                .text(v)
                .raw("</b></span> ");
        }
        h.raw("</div>");
    }
    Ok(html::page(
        &format!("{} · {}", sel.service, sel.kind),
        "Profiles",
        h,
    ))
}

/// Escapes regex metacharacters, for inferno's search (which takes a regex).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
