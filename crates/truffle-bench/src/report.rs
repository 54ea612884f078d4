//! Statistics over samples, plain-text tables, targets and the JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Latency samples in milliseconds, plus how many trials timed out.
///
/// Every sample is kept and percentiles are exact (nearest rank), rather than taken from
/// an `hdrhistogram`: a scenario collects at most a few thousand samples, so keeping them
/// costs nothing, and the reported figures are the measured values themselves, not a
/// histogram bucket's (a 0.35 ms p50 must not read as a neighbouring bucket's bound).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    ms: Vec<f64>,
    timeouts: usize,
}

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }

    /// Counts a trial that never completed before its deadline.
    pub fn timeout(&mut self) {
        self.timeouts += 1;
    }

    /// Number of completed samples.
    pub fn count(&self) -> usize {
        self.ms.len()
    }

    /// Trials that hit their deadline.
    pub fn timeouts(&self) -> usize {
        self.timeouts
    }

    /// The `p`-th percentile (0–100), nearest rank; `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.ms.is_empty() {
            return None;
        }
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    /// Median.
    pub fn p50(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    /// 99th percentile.
    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }

    /// Largest sample.
    pub fn max(&self) -> Option<f64> {
        self.ms.iter().copied().reduce(f64::max)
    }

    /// Mean of the samples.
    pub fn mean(&self) -> Option<f64> {
        (!self.ms.is_empty()).then(|| self.ms.iter().sum::<f64>() / self.ms.len() as f64)
    }

    /// Summary (and, with `raw`, every sample) as JSON.
    pub fn to_json(&self, raw: bool) -> Value {
        let mut m = Map::new();
        m.insert("n".into(), json!(self.ms.len()));
        m.insert("timeouts".into(), json!(self.timeouts));
        m.insert("p50_ms".into(), json!(self.p50()));
        m.insert("p90_ms".into(), json!(self.percentile(90.0)));
        m.insert("p99_ms".into(), json!(self.p99()));
        m.insert("max_ms".into(), json!(self.max()));
        m.insert("mean_ms".into(), json!(self.mean()));
        if raw {
            let rounded: Vec<f64> = self
                .ms
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect();
            m.insert("samples_ms".into(), json!(rounded));
        }
        Value::Object(m)
    }

    /// The cells `p50 p90 p99 max n timeouts` for a table row.
    pub fn cells(&self) -> Vec<String> {
        vec![
            ms(self.p50()),
            ms(self.percentile(90.0)),
            ms(self.p99()),
            ms(self.max()),
            self.ms.len().to_string(),
            self.timeouts.to_string(),
        ]
    }
}

/// Formats milliseconds for a table, `-` when absent.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// Formats a count or rate with thousands separators.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A plain-text table: a title, column headers and rows of cells.
#[derive(Debug)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table.
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table to stdout: first column left-aligned, the others right-aligned.
    pub fn print(&self) {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                if i == 0 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str("  ");
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
            }
            s.trim_end().to_string()
        };
        let total: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
        println!("\n{}", self.title);
        println!("{}", "=".repeat(total.max(self.title.chars().count())));
        println!("{}", line(&self.headers));
        println!("{}", "-".repeat(total));
        for r in &self.rows {
            println!("{}", line(r));
        }
    }
}

/// Which way a target bounds its figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The figure must be at most the limit.
    AtMost,
    /// The figure must be at least the limit.
    AtLeast,
}

/// One row of the targets table.
#[derive(Clone, Debug)]
pub struct TargetRow {
    /// What is measured.
    pub name: String,
    /// The measured figure, if the scenario ran and produced one.
    pub measured: Option<f64>,
    /// Unit of the figure and the limit.
    pub unit: String,
    /// Direction of the bound.
    pub bound: Bound,
    /// The limit.
    pub limit: f64,
    /// How the figure was taken.
    pub how: String,
}

impl TargetRow {
    /// `PASS`, `MISS`, or `n/a` when nothing was measured.
    pub fn status(&self) -> &'static str {
        match self.measured {
            None => "n/a",
            Some(v) if !v.is_finite() => "MISS",
            Some(v) => {
                let ok = match self.bound {
                    Bound::AtMost => v <= self.limit,
                    Bound::AtLeast => v >= self.limit,
                };
                if ok {
                    "PASS"
                } else {
                    "MISS"
                }
            }
        }
    }

    fn limit_text(&self) -> String {
        let op = match self.bound {
            Bound::AtMost => "<=",
            Bound::AtLeast => ">=",
        };
        format!("{op} {} {}", fmt_fig(self.limit), self.unit)
    }
}

/// Formats a figure compactly for the targets table.
pub fn fmt_fig(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 10_000.0 {
        num(v)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Everything a run produces: per-scenario JSON, named figures, targets and notes.
#[derive(Debug, Default)]
pub struct Report {
    /// Per-scenario details, by scenario name.
    pub scenarios: Map<String, Value>,
    /// Named headline figures (for targets and ratios), e.g. `b1.n8.p50_ms`.
    pub figures: BTreeMap<String, f64>,
    /// Things that could not be measured, and why.
    pub unmeasured: Vec<String>,
    /// Other remarks worth reading beside the figures.
    pub notes: Vec<String>,
}

impl Report {
    /// Records a named figure.
    pub fn figure(&mut self, name: impl Into<String>, v: Option<f64>) {
        if let Some(v) = v {
            self.figures.insert(name.into(), v);
        }
    }

    /// Adds another report's figures and remarks (scenario details are kept by the caller).
    pub fn merge(&mut self, other: Report) {
        self.figures.extend(other.figures);
        self.unmeasured.extend(other.unmeasured);
        self.notes.extend(other.notes);
        self.scenarios.extend(other.scenarios);
    }

    /// A named figure, if recorded.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures.get(name).copied()
    }

    /// Prints the targets table and returns its rows as JSON.
    pub fn print_targets(&self, rows: &[TargetRow]) -> Value {
        let mut t = Table::new(
            "Targets (2-core, loopback)",
            &["target", "measured", "limit", "status", "how"],
        );
        for r in rows {
            t.row(vec![
                r.name.clone(),
                r.measured
                    .map(|v| format!("{} {}", fmt_fig(v), r.unit))
                    .unwrap_or_else(|| "-".into()),
                r.limit_text(),
                r.status().into(),
                r.how.clone(),
            ]);
        }
        t.print();
        Value::Array(
            rows.iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "measured": r.measured,
                        "unit": r.unit,
                        "bound": if r.bound == Bound::AtMost { "at_most" } else { "at_least" },
                        "limit": r.limit,
                        "status": r.status(),
                        "how": r.how,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_millis(i));
        }
        assert_eq!(s.p50(), Some(50.0));
        assert_eq!(s.p99(), Some(99.0));
        assert_eq!(s.max(), Some(100.0));
        assert_eq!(num(1234567.0), "1 234 567");
    }
}
