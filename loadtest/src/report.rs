//! The report every mode prints: a table of figures with the bare limit measured in
//! the same run, the ratio to it and the target, and the same data as JSON.

use std::fmt::Write as _;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub value: String,
    /// The bare limit measured in this run, when one applies.
    pub bare: Option<String>,
    /// value / bare (or bare / value, for throughput), when both exist.
    pub ratio: Option<f64>,
    pub target: Option<String>,
    /// Whether the target is met (None: no target or not measurable here).
    pub met: Option<bool>,
}

impl Row {
    pub fn new(figure: &str, value: impl Into<String>) -> Self {
        Row {
            figure: figure.into(),
            value: value.into(),
            bare: None,
            ratio: None,
            target: None,
            met: None,
        }
    }
    pub fn bare(mut self, bare: impl Into<String>, ratio: f64) -> Self {
        self.bare = Some(bare.into());
        self.ratio = ratio.is_finite().then_some(ratio);
        self
    }
    pub fn target(mut self, target: &str, met: Option<bool>) -> Self {
        self.target = Some(target.into());
        self.met = met;
        self
    }
}

/// Renders rows as an aligned text table.
pub fn table(title: &str, rows: &[Row]) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.value.clone(),
                r.bare.clone().unwrap_or_default(),
                r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
                match (&r.target, r.met) {
                    (Some(t), Some(true)) => format!("{t}  met"),
                    (Some(t), Some(false)) => format!("{t}  MISSED"),
                    (Some(t), None) => t.clone(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    let head = ["figure", "value", "bare limit", "ratio", "target"];
    let mut w = head.map(|h| h.len());
    for c in &cells {
        for i in 0..5 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let line = |out: &mut String, c: &[String; 5]| {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    };
    line(&mut out, &head.map(String::from));
    for c in &cells {
        line(&mut out, c);
    }
    out
}

/// A progress bar on stderr (hidden when not wanted or not a terminal).
pub fn progress(show: bool, len: u64, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &std::path::Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// Formats microseconds compactly.
pub fn us(x: f64) -> String {
    format!("{x:.2} µs")
}

/// Several durations in ms, " / " between them (p50 / p99 / p999 and the like).
pub fn ms_each(values: &[f64]) -> String {
    values
        .iter()
        .map(|&x| ms(x))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Formats milliseconds compactly.
pub fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0} ms")
    } else {
        format!("{x:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_marks_targets() {
        let t = table(
            "t",
            &[
                Row::new("cpu", "2.00 µs")
                    .bare("3.50 µs", 0.57)
                    .target("≤ 1.5×", Some(true)),
                Row::new("loss", "0").target("0", Some(false)),
            ],
        );
        assert!(
            t.contains("met") && t.contains("MISSED") && t.contains("0.57"),
            "{t}"
        );
    }
}
