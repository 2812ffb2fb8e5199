//! HTML built by hand, escaped by default: [`Html::text`] escapes, and [`Html::raw`] takes only
//! `&'static str`, so a label or function name can reach a page only through escaping.

use std::time::{Duration, SystemTime};

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs (values encoded; empty values left out).
pub fn query(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = path.to_owned();
    let mut first = true;
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        out.push(if first { '?' } else { '&' });
        first = false;
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// A page under construction.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    /// Markup written in this program.
    pub fn raw(&mut self, s: &'static str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    /// Text from anywhere, escaped.
    pub fn text(&mut self, s: impl AsRef<str>) -> &mut Self {
        self.0.push_str(&escape(s.as_ref()));
        self
    }

    /// A link.
    pub fn link(&mut self, href: &str, text: impl AsRef<str>) -> &mut Self {
        self.raw("<a href=\"")
            .text(href)
            .raw("\">")
            .text(text)
            .raw("</a>")
    }

    /// An element with escaped text: `<tag class="class">text</tag>`.
    pub fn el(
        &mut self,
        tag: &'static str,
        class: &'static str,
        text: impl AsRef<str>,
    ) -> &mut Self {
        self.raw("<").raw(tag);
        if !class.is_empty() {
            self.raw(" class=\"").raw(class).raw("\"");
        }
        self.raw(">").text(text).raw("</").raw(tag).raw(">")
    }

    /// The markup so far.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Content-Security-Policy of the pages: no script at all, everything else from this origin.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; object-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'";

/// A whole page: the layout around `body`.
pub fn page(title: &str, active: &'static str, body: Html) -> Response {
    let mut h = Html::default();
    h.raw("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>")
        .text(title)
        .raw(" — kubeprof</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head><body><header><a class=\"brand\" href=\"/ui\">kubeprof</a><nav>");
    for (href, name) in [("/targets", "Targets"), ("/ui", "Profiles")] {
        h.raw("<a href=\"").raw(href).raw("\"");
        if name == active {
            h.raw(" class=\"active\"");
        }
        h.raw(">").raw(name).raw("</a>");
    }
    h.raw("<a href=\"/metrics\">Metrics</a></nav></header><main>");
    h.el("h1", "", title);
    h.0.push_str(&body.0);
    h.raw("</main></body></html>\n");
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        h.into_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error page with its status.
pub fn error_page(status: axum::http::StatusCode, message: &str) -> Response {
    let mut body = Html::default();
    body.el("p", "error", message);
    let mut r = page("Not available", "", body);
    *r.status_mut() = status;
    r
}

/// `2026-01-02T03:04:05Z`.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `12s ago`, `in 3s`.
pub fn relative(t: SystemTime, now: SystemTime) -> String {
    match now.duration_since(t) {
        Ok(ago) => format!("{} ago", short(ago)),
        Err(e) => format!("in {}", short(e.duration())),
    }
}

/// A short human duration: `850ms`, `12s`, `3m4s`, `2h5m`.
pub fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// `12.3%` of `part` in `whole`.
pub fn percent(part: i64, whole: i64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_raw_takes_only_static_markup() {
        let mut h = Html::default();
        h.raw("<td>")
            .text("<script>alert('x')</script> & \"q\"")
            .raw("</td>");
        assert_eq!(
            h.into_string(),
            "<td>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;</td>"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query(
                "/ui/flame",
                &[
                    ("service", "shop/checkout & co"),
                    ("at", ""),
                    ("type", "cpu")
                ]
            ),
            "/ui/flame?service=shop%2Fcheckout%20%26%20co&type=cpu"
        );
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(short(Duration::from_secs(184)), "3m4s");
        assert_eq!(short(Duration::from_secs(7500)), "2h5m");
    }
}
