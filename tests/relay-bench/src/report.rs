//! The one table the benchmark prints, with the targets from the issue
//! that asked for it and the facts about the machine that the figures
//! depend on.

use std::time::Duration;

use crate::database::ServerFacts;
use crate::latency::{self, LatencyResult};
use crate::raw::{self, RawResult};
use crate::throughput::ThroughputResult;

/// The relay should reach at least this fraction of the raw rate.
const RATIO_TARGET: f64 = 0.5;

/// The p99 latency target at 1k events/s.
const P99_TARGET: Duration = Duration::from_millis(25);

/// The peak RSS target at a million orders, in MiB.
const RSS_TARGET_MIB: f64 = 64.0;

/// The machine the figures were measured on.
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// The CPU's model name, if `/proc/cpuinfo` says.
    pub cpu: String,
    /// The one-minute load average before the run.
    pub load_before: String,
    /// The one-minute load average after the run.
    pub load_after: String,
    /// The PostgreSQL server.
    pub postgres: ServerFacts,
}

impl Machine {
    /// What this machine says about itself, with `postgres`.
    pub fn describe(postgres: ServerFacts) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string());
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            load_before: load_average(),
            load_after: String::new(),
            postgres,
        }
    }
}

/// The one-minute load average, as `/proc/loadavg` shows it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Everything measured in one run.
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// Orders in the raw and throughput phases.
    pub orders: u64,
    /// Rows per statement, raw and relay alike.
    pub batch_size: usize,
    /// The latency phase's target rate.
    pub rate: u32,
    /// Phase 1.
    pub raw: RawResult,
    /// Phase 2.
    pub relay: ThroughputResult,
    /// Phase 3.
    pub latency: LatencyResult,
}

impl Report {
    /// Prints the table to stdout.
    pub fn print(&self) {
        let m = &self.machine;
        let pg = &m.postgres;
        println!();
        println!(
            "machine: {} cores ({}), load average {} before, {} after",
            m.cores, m.cpu, m.load_before, m.load_after
        );
        println!(
            "PostgreSQL {} (fsync {}, synchronous_commit {}); \
             N = {} orders; batch size {}",
            pg.version, pg.fsync, pg.synchronous_commit, self.orders, self.batch_size
        );
        println!();
        row("figure", "value", "target");
        row("------", "-----", "------");
        for (figure, value, target) in self.rows() {
            row(&figure, &value, &target);
        }
    }

    fn rows(&self) -> Vec<(String, String, String)> {
        let n = self.orders;
        let ratio = self.relay.rate() / self.raw.rate();
        let p99 = latency::quantile(&self.latency.seen, 0.99);
        let peak_mib = mib(self.relay.memory.peak);
        let l = &self.latency;
        let quantiles = |samples: &[Duration]| {
            let q = |p| ms(latency::quantile(samples, p));
            format!("{} / {} / {}", q(0.5), q(0.99), q(1.0))
        };
        vec![
            (
                format!("raw PostgreSQL, {} connections", raw::CONNECTIONS),
                format!("{} rows/s", thousands(self.raw.rate())),
                String::new(),
            ),
            (
                format!("relay, backlog of {n}"),
                format!("{} events/s", thousands(self.relay.rate())),
                String::new(),
            ),
            (
                "ratio relay/raw".into(),
                format!("{ratio:.2}"),
                verdict(ratio >= RATIO_TARGET, ">= 0.5 at N = 200000"),
            ),
            (
                format!("latency p50/p99/max at {}/s", self.rate),
                quantiles(&l.seen),
                verdict(p99 <= P99_TARGET, "p99 <= 25 ms"),
            ),
            (
                "  to write start (created_at)".into(),
                quantiles(&l.write_started),
                String::new(),
            ),
            (
                "  append rate achieved".into(),
                format!("{:.0}/s, {} orders", l.achieved_rate, l.seen.len()),
                String::new(),
            ),
            (
                format!("relay peak RSS, backlog of {n}"),
                format!("{peak_mib:.1} MiB"),
                verdict(peak_mib <= RSS_TARGET_MIB, "<= 64 MiB at N = 1000000"),
            ),
        ]
    }
}

fn row(figure: &str, value: &str, target: &str) {
    println!("{figure:<34} {value:>28}   {target}");
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target}: {}", if met { "met" } else { "MISSED" })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A rate rounded to a whole number, with thousands separated by commas.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates print with thousands separated.
    #[test]
    fn rates_print_with_thousands_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(118_000.2), "118,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
