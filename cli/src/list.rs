//! `certsmith list`: what is in the store and when it will be renewed.
//!
//! Why this module exists: an operator (or a monitoring check with
//! `--output json`) needs one place that answers "what do I have, when does
//! it expire, when will certsmith renew it and why, and is anything wrong"
//! without contacting the CA. Everything comes from the store: the current
//! `cert.pem` and the `lineage.toml` next to it, whose `[renewal]` record
//! `run`/`renew` keep up to date (including the CA's ARI window). It only
//! reads: a state directory that does not exist is an error, not a new,
//! empty store.
//!
//! The text output is a table aligned to the terminal's width (columns of
//! less interest are left out, then the domains shortened, when it is too
//! narrow), or, when stdout is not a terminal, the same columns separated
//! by tabs, one line per certificate after a header line, for `cut` and
//! `awk` (`--output json` is the stable format for programs).

use certsmith_core::error::IssueError;
use certsmith_core::renewal::{self, CertState};
use serde_json::json;
use time::OffsetDateTime;

use crate::failure::Failure;
use crate::output::{outln, print_json};
use crate::setup;
use crate::{GlobalArgs, OutputFormat, exit, term};

/// List stored certificates.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only this certificate (repeatable).
    #[arg(long = "cert-name", value_name = "NAME")]
    names: Vec<String>,
}

struct Row {
    name: String,
    domains: Vec<String>,
    issuer: String,
    serial: String,
    not_after: Option<OffsetDateTime>,
    days_left: Option<i64>,
    next: Option<(OffsetDateTime, renewal::RenewReason)>,
    explanation_url: Option<String>,
    solver: String,
    state: String,
    version: Option<u32>,
    path: String,
    /// Until when the CA's rate limit covers its names, if one does.
    rate_limited_until: Option<String>,
}

pub(crate) async fn run(global: &GlobalArgs, args: ListArgs) -> u8 {
    let config = match setup::load_config(global) {
        Ok(c) => c,
        Err(e) => return setup::report_config_errors(global, &e),
    };
    let store = match setup::open_store_read_only(global, config.as_ref()) {
        Ok(s) => s,
        Err(f) => return f.report(global, None),
    };
    let names = match store.cert_names() {
        Ok(n) => n,
        Err(e) => return Failure::from_issue(&IssueError::from(e)).report(global, None),
    };
    let now = OffsetDateTime::now_utc();
    // Rate limits the CA reported and that still hold.
    let limits = certsmith_core::engine::RateLimits::new(store.rate_limits().unwrap_or_else(|e| {
        log::warn!("{e}");
        Vec::new()
    }));
    let mut rows = Vec::new();
    for name in names {
        if !args.names.is_empty() && !args.names.contains(&name) {
            continue;
        }
        let lineage = match store.load_lineage(&name) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("{e}");
                continue;
            }
        };
        let current = store
            .current_dir(&name)
            .map_or_else(|| "-".to_owned(), |d| d.display().to_string());
        let rate_limited_until = limits
            .blocking(&lineage.server, &lineage.domains)
            .map(|r| r.until);
        let facts = renewal::read_current(&store, &name);
        let row = match facts {
            Ok(Some(f)) => {
                let state = renewal::state(&lineage, &f, now);
                let live = !matches!(
                    state,
                    CertState::Revoked | CertState::Expired | CertState::Retired
                );
                let next = live.then(|| renewal::stored_schedule(&lineage, &f));
                let explanation_url = lineage
                    .renewal
                    .as_ref()
                    .filter(|r| r.serial == f.serial)
                    .and_then(|r| r.explanation_url.clone());
                Row {
                    name: name.clone(),
                    domains: lineage.domains.clone(),
                    issuer: f.issuer.clone(),
                    serial: f.serial.clone(),
                    not_after: Some(f.not_after),
                    days_left: Some((f.not_after - now).whole_days()),
                    next,
                    explanation_url,
                    solver: lineage.solver.clone(),
                    state: state.as_str().to_owned(),
                    version: store.current_version(&name).ok().flatten(),
                    path: current.clone(),
                    rate_limited_until: rate_limited_until.clone(),
                }
            }
            Ok(None) | Err(_) => {
                // A damaged current version is due (`run`/`renew` replace
                // it); a missing one was never stored.
                let damaged = matches!(&facts, Err(renewal::RenewalError::Damaged { .. }));
                if let Err(e) = &facts {
                    log::warn!("{e}");
                }
                Row {
                    name: name.clone(),
                    domains: lineage.domains.clone(),
                    issuer: String::new(),
                    serial: String::new(),
                    not_after: None,
                    days_left: None,
                    next: None,
                    explanation_url: None,
                    solver: lineage.solver.clone(),
                    state: if damaged { "damaged" } else { "missing" }.to_owned(),
                    version: if damaged {
                        store.current_version(&name).ok().flatten()
                    } else {
                        None
                    },
                    path: current.clone(),
                    rate_limited_until: rate_limited_until.clone(),
                }
            }
        };
        rows.push(row);
    }
    for n in &args.names {
        if !rows.iter().any(|r| &r.name == n) {
            return Failure::usage(
                format!("no certificate named '{n}' in {}", store.location()),
                None,
            )
            .report(global, None);
        }
    }
    match global.output {
        // One object per line (JSON Lines), as `run` and `renew` print;
        // an empty store prints `[]`, so that a reader always gets a
        // value (docs/json.md).
        OutputFormat::Json if rows.is_empty() => print_json(&json!([])),
        OutputFormat::Json => {
            for r in &rows {
                print_json(&json!({
                    "name": r.name,
                    "domains": r.domains,
                    "issuer": r.issuer,
                    "serial": r.serial,
                    "not_after": r.not_after.map(renewal::rfc3339),
                    "days_left": r.days_left,
                    "next_renewal": r.next.map(|(t, _)| renewal::rfc3339(t)),
                    "renewal_reason": r.next.map(|(_, why)| why.as_str()),
                    "explanation_url": r.explanation_url,
                    "solver": r.solver,
                    "state": r.state,
                    "version": r.version,
                    "path": r.path,
                    "rate_limited_until": r.rate_limited_until,
                }));
            }
        }
        OutputFormat::Text => {
            if rows.is_empty() {
                outln!("no certificates in {}", store.location());
                return exit::OK;
            }
            let table = table(&rows);
            let text = match term::stdout_width() {
                Some(width) => render_aligned(&table, width),
                None => render_tab_separated(&table),
            };
            crate::output::write_stdout(format_args!("{text}"));
            for r in &rows {
                if let Some(until) = &r.rate_limited_until {
                    outln!("{}: the CA rate-limited its names until {until}", r.name);
                }
            }
        }
    }
    exit::OK
}

/// The text table: a header row, then one row per certificate.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

/// The columns, in order; the domains always come last.
const COLUMNS: [&str; 8] = [
    "NAME",
    "STATE",
    "NOT AFTER",
    "DAYS",
    "NEXT RENEWAL (WHY)",
    "SOLVER",
    "ISSUER",
    "DOMAINS",
];

/// Which columns a narrow terminal loses first (indexes into [`COLUMNS`]).
const DROP_ORDER: [usize; 3] = [6, 2, 5];

/// The columns that start with an RFC 3339 time (indexes into [`COLUMNS`]).
const TIMESTAMPS: [usize; 2] = [2, 4];

/// The last column is shortened to no less than this on a narrow terminal.
const MIN_LAST: usize = 12;

/// Space between aligned columns.
const GAP: &str = "  ";

fn table(rows: &[Row]) -> Table {
    let dash = || "-".to_owned();
    Table {
        header: COLUMNS.to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.state.clone(),
                    r.not_after.map_or_else(dash, renewal::rfc3339),
                    r.days_left.map_or_else(dash, |d| d.to_string()),
                    r.next.map_or_else(dash, |(t, why)| {
                        format!("{} ({})", renewal::rfc3339(t), why.as_str())
                    }),
                    r.solver.clone(),
                    if r.issuer.is_empty() {
                        dash()
                    } else {
                        r.issuer.clone()
                    },
                    r.domains.join(", "),
                ]
            })
            .collect(),
    }
}

/// One line per row, cells separated by tabs (tabs and newlines inside a
/// cell become spaces).
fn render_tab_separated(t: &Table) -> String {
    let clean = |c: &str| c.replace(['\t', '\n', '\r'], " ");
    let mut out = String::new();
    let header: Vec<String> = t.header.iter().map(|h| clean(h)).collect();
    out.push_str(&header.join("\t"));
    out.push('\n');
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(|c| clean(c)).collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Columns padded to their widest cell, fitted into `width`: columns of
/// [`DROP_ORDER`] are left out while the table is too wide, then times are
/// shown to the day, then the last column is cut (ending in `…`) to what
/// is left, but not below [`MIN_LAST`]; a table wider than that is left
/// for the terminal to wrap.
fn render_aligned(t: &Table, width: usize) -> String {
    let n = t.header.len();
    let widths_of = |rows: &[Vec<String>]| -> Vec<usize> {
        (0..n)
            .map(|i| {
                rows.iter()
                    .map(|r| chars(&r[i]))
                    .chain([chars(t.header[i])])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    };
    let total = |shown: &[usize], widths: &[usize]| {
        shown.iter().map(|&i| widths[i]).sum::<usize>() + GAP.len() * shown.len().saturating_sub(1)
    };
    let mut widths = widths_of(&t.rows);
    let mut shown: Vec<usize> = (0..n).collect();
    for drop in DROP_ORDER {
        if total(&shown, &widths) <= width {
            break;
        }
        shown.retain(|&i| i != drop);
    }
    let mut rows: Vec<Vec<String>> = t.rows.clone();
    if total(&shown, &widths) > width {
        for row in &mut rows {
            for &i in &TIMESTAMPS {
                row[i] = to_the_day(&row[i]);
            }
        }
        widths = widths_of(&rows);
    }
    let last = n - 1;
    let overflow = total(&shown, &widths).saturating_sub(width);
    if overflow > 0 {
        widths[last] = widths[last].saturating_sub(overflow).max(MIN_LAST);
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (k, &i) in shown.iter().enumerate() {
            let cell = cells[i];
            if i == last {
                out.push_str(&cut(cell, widths[i]));
            } else if i == 3 {
                // DAYS: numbers align right.
                out.push_str(&format!("{cell:>w$}", w = widths[i]));
            } else {
                out.push_str(&format!("{cell:<w$}", w = widths[i]));
            }
            if k + 1 < shown.len() {
                out.push_str(GAP);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(t.header.clone());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `2026-01-30T00:00:00Z (expiry)` as `2026-01-30 (expiry)`; other text
/// as it is.
fn to_the_day(cell: &str) -> String {
    let b = cell.as_bytes();
    if b.len() >= 20 && b[10] == b'T' && b[19] == b'Z' && cell.is_char_boundary(20) {
        format!("{}{}", &cell[..10], &cell[20..])
    } else {
        cell.to_owned()
    }
}

/// `s` in at most `width` characters, ending in `…` when cut.
fn cut(s: &str, width: usize) -> String {
    if chars(s) <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table {
            header: COLUMNS.to_vec(),
            rows: vec![
                vec![
                    "a1.example.test".into(),
                    "valid".into(),
                    "2026-03-01T00:00:00Z".into(),
                    "89".into(),
                    "2026-01-30T00:00:00Z (expiry)".into(),
                    "standalone".into(),
                    "Pebble Intermediate CA 31a367".into(),
                    "a1.example.test, www.a1.example.test".into(),
                ],
                vec![
                    "b".into(),
                    "missing".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "webroot".into(),
                    "-".into(),
                    "b.example.test".into(),
                ],
            ],
        }
    }

    #[test]
    fn wide_terminals_get_every_column_aligned() {
        let text = render_aligned(&sample(), 200);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        // Every column starts at the same offset on every line.
        for col in ["STATE", "NOT AFTER", "SOLVER", "ISSUER", "DOMAINS"] {
            let at = lines[0].find(col).expect("header has the column");
            let cell = match col {
                "STATE" => ("valid", "missing"),
                "NOT AFTER" => ("2026-03-01", "-"),
                "SOLVER" => ("standalone", "webroot"),
                "ISSUER" => ("Pebble", "-"),
                _ => ("a1.example.test, www", "b.example.test"),
            };
            assert!(lines[1][at..].starts_with(cell.0), "{col}:\n{text}");
            assert!(lines[2][at..].starts_with(cell.1), "{col}:\n{text}");
        }
        assert!(
            text.contains("Pebble Intermediate CA 31a367  a1.example.test, www.a1.example.test")
        );
        assert!(lines.iter().all(|l| l.len() <= 200 && !l.ends_with(' ')));
    }

    #[test]
    fn narrow_terminals_lose_columns_then_shorten_the_domains() {
        // 164 columns wide in full: the issuer goes first.
        let text = render_aligned(&sample(), 140);
        assert!(
            !text.contains("ISSUER") && !text.contains("Pebble"),
            "{text}"
        );
        assert!(
            text.contains("NOT AFTER") && text.contains("SOLVER"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 140), "{text}");
        assert!(text.contains("www.a1.example.test"), "{text}");

        let text = render_aligned(&sample(), 80);
        assert!(
            !text.contains("NOT AFTER") && !text.contains("SOLVER"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(
            text.contains("a1.example.test, www.a1.ex…\n"),
            "the domains are cut: {text}"
        );
        assert!(text.contains("b.example.test\n"), "{text}");
        assert!(
            text.contains("NEXT RENEWAL (WHY)") && text.contains("2026-01-30 (expiry)"),
            "{text}"
        );
    }

    #[test]
    fn pipes_get_tab_separated_lines() {
        let text = render_tab_separated(&sample());
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines[0], COLUMNS);
        assert_eq!(lines[1][7], "a1.example.test, www.a1.example.test");
        assert_eq!(lines[2][2], "-");
        assert!(lines.iter().all(|l| l.len() == COLUMNS.len()));
    }

    #[test]
    fn very_narrow_terminals_get_times_to_the_day() {
        let text = render_aligned(&sample(), 66);
        assert!(text.contains("2026-01-30 (expiry)"), "{text}");
        assert!(!text.contains("T00:00:00Z"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 66), "{text}");
        assert_eq!(to_the_day("-"), "-");
        assert_eq!(to_the_day("2026-03-01T00:00:00Z"), "2026-03-01");
    }

    #[test]
    fn cut_keeps_short_text_and_marks_cuts() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
