//! Per-processor counters and a latency histogram, rendered in the Prometheus text format.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// What one processor has done since it started. Shared with the runtime through an `Arc`.
#[derive(Debug)]
pub struct ProcessorMetrics {
    pub name: String,
    /// Records handed to the processor (replays after a restart included).
    pub records_in: AtomicU64,
    /// Records the processor published.
    pub records_out: AtomicU64,
    /// Failed attempts (each retry that fails counts again).
    pub failed: AtomicU64,
    /// Attempts after the first.
    pub retried: AtomicU64,
    /// Records parked in a dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Records in the input topics not yet checkpointed, as of the last checkpoint.
    pub lag: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Time in `process` per record (successful attempts), in microseconds.
    latency_us: Mutex<Histogram<u64>>,
}

/// A copy of the latency histogram's main quantiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub sum_us: u64,
}

impl ProcessorMetrics {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            // 3 significant figures up to an hour; `new_with_bounds` only fails on bad bounds.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures is valid")),
            ),
        }
    }

    pub fn record_latency(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.lock().saturating_record(micros);
    }

    pub fn latency(&self) -> LatencySummary {
        let histogram = self.latency_us.lock();
        let sum = histogram
            .iter_recorded()
            .map(|v| v.value_iterated_to() * v.count_at_value())
            .sum();
        LatencySummary {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
            sum_us: sum,
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Picks one counter out of a processor's metrics.
type CounterOf = fn(&ProcessorMetrics) -> &AtomicU64;

/// Renders processors' metrics in the Prometheus text format, for the server's `/metrics`.
pub fn render_prometheus(processors: &[std::sync::Arc<ProcessorMetrics>]) -> String {
    let mut out = String::new();
    let counters: [(&str, &str, CounterOf); 6] = [
        (
            "flare_processor_records_in_total",
            "Records handed to the processor.",
            |m| &m.records_in,
        ),
        (
            "flare_processor_records_out_total",
            "Records the processor published.",
            |m| &m.records_out,
        ),
        (
            "flare_processor_failed_total",
            "Failed processing attempts.",
            |m| &m.failed,
        ),
        (
            "flare_processor_retried_total",
            "Processing attempts after the first.",
            |m| &m.retried,
        ),
        (
            "flare_processor_dead_lettered_total",
            "Records parked in a dead-letter topic.",
            |m| &m.dead_lettered,
        ),
        (
            "flare_processor_checkpoints_total",
            "State checkpoints written.",
            |m| &m.checkpoints,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in processors {
            let _ = writeln!(
                out,
                "{name}{{processor=\"{}\"}} {}",
                m.name,
                counter(m).load(Ordering::Relaxed)
            );
        }
    }
    out.push_str("# HELP flare_processor_lag Input records not yet checkpointed.\n# TYPE flare_processor_lag gauge\n");
    for m in processors {
        let _ = writeln!(
            out,
            "flare_processor_lag{{processor=\"{}\"}} {}",
            m.name,
            m.lag.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP flare_processor_latency_seconds Time to process one record.\n# TYPE flare_processor_latency_seconds summary\n");
    for m in processors {
        let latency = m.latency();
        for (quantile, micros) in [("0.5", latency.p50_us), ("0.99", latency.p99_us)] {
            let _ = writeln!(
                out,
                "flare_processor_latency_seconds{{processor=\"{}\",quantile=\"{quantile}\"}} {}",
                m.name,
                micros as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "flare_processor_latency_seconds_sum{{processor=\"{}\"}} {}\nflare_processor_latency_seconds_count{{processor=\"{}\"}} {}",
            m.name,
            latency.sum_us as f64 / 1e6,
            m.name,
            latency.count
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_and_the_latency_summary() {
        let metrics = std::sync::Arc::new(ProcessorMetrics::new("qsofa"));
        ProcessorMetrics::add(&metrics.records_in, 3);
        ProcessorMetrics::add(&metrics.dead_lettered, 1);
        metrics.record_latency(Duration::from_micros(250));
        metrics.record_latency(Duration::from_micros(750));
        let text = render_prometheus(&[metrics]);
        assert!(text.contains("flare_processor_records_in_total{processor=\"qsofa\"} 3"));
        assert!(text.contains("flare_processor_dead_lettered_total{processor=\"qsofa\"} 1"));
        assert!(text.contains("flare_processor_latency_seconds_count{processor=\"qsofa\"} 2"));
        let p99 = text
            .lines()
            .find(|l| l.contains("quantile=\"0.99\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((p99 - 0.00075).abs() < 0.00001, "{p99}");
    }
}
