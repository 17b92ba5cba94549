//! Aligned plain-text tables, latency histograms and machine facts for `flare bench`.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A table printed as aligned pipe-separated text (readable in a terminal, pastes into
/// Markdown as is). Leading text columns are left-aligned, the numbers after them
/// right-aligned.
#[derive(Debug)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    text_columns: usize,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            text_columns: 1,
        }
    }

    /// How many leading columns hold text (left-aligned). Default 1.
    pub fn with_text_columns(mut self, columns: usize) -> Self {
        self.text_columns = columns;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate().take(columns) {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (column, width) in widths.iter().enumerate() {
                let cell = cells.get(column).map(String::as_str).unwrap_or("");
                if column < self.text_columns {
                    out.push_str(&format!(" {cell:<width$} |"));
                } else {
                    out.push_str(&format!(" {cell:>width$} |"));
                }
            }
            out
        };
        let mut out = format!("{}\n\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        out.push('|');
        for (column, width) in widths.iter().enumerate() {
            // A trailing colon right-aligns the column when the table is read as Markdown.
            if column < self.text_columns {
                out.push_str(&format!("{}|", "-".repeat(width + 2)));
            } else {
                out.push_str(&format!("{}:|", "-".repeat(width + 1)));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// Latencies in microseconds, from 1 µs to one minute, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts, so this cannot fail.
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding never fails.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(q))
    }

    pub fn p50(&self) -> String {
        millis(self.quantile(0.50))
    }

    pub fn p99(&self) -> String {
        millis(self.quantile(0.99))
    }

    pub fn max(&self) -> String {
        millis(Duration::from_micros(self.0.max()))
    }
}

/// A duration in milliseconds with two decimals (`"-"` when nothing was measured).
pub fn millis(duration: Duration) -> String {
    if duration.is_zero() {
        "-".into()
    } else {
        format!("{:.2} ms", duration.as_secs_f64() * 1e3)
    }
}

/// A rate with thousands separators: `12,345`.
pub fn rate(per_second: f64) -> String {
    grouped(per_second.round() as u64)
}

pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `yes`/`NO` for a target check, so a missed target stands out in the table.
pub fn met(ok: bool) -> String {
    if ok { "yes".into() } else { "NO".into() }
}

/// The 1-minute load average, from /proc/loadavg.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn load_average_text() -> String {
    load_average().map_or_else(|| "unknown".into(), |load| format!("{load:.2}"))
}

/// The CPU model and the number of logical CPUs, from /proc/cpuinfo.
pub fn cpu() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let processors = info
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    (model, processors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut table = Table::new("T", &["name", "ops/s"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["longer".into(), "12,345".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(lines[0], "| name   |  ops/s |");
        assert_eq!(lines[1], "|--------|-------:|");
        assert_eq!(lines[2], "| a      |      1 |");
        assert_eq!(lines[3], "| longer | 12,345 |");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
    }

    #[test]
    fn quantiles_follow_the_recorded_latencies() {
        let mut latencies = Latencies::new();
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms));
        }
        let p50 = latencies.quantile(0.5).as_secs_f64() * 1e3;
        let p99 = latencies.quantile(0.99).as_secs_f64() * 1e3;
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((98.0..=100.0).contains(&p99), "{p99}");
        let mut other = Latencies::new();
        other.record(Duration::from_secs(2));
        latencies.merge(&other);
        assert_eq!(latencies.count(), 101);
        assert!(latencies.max().starts_with("2000"), "{}", latencies.max());
    }
}
