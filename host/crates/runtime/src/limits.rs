//! Per-plugin limits.

use std::time::Duration;

/// What one plugin may consume. Defaults suit the built-in plugins; packs may
/// tighten or (within the agent's policy) loosen them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one `on-events` call (one batch).
    pub call_deadline: Duration,
    /// Wall-clock budget of `init` (rules may be compiled there).
    pub init_deadline: Duration,
    /// Linear-memory cap of one instance, in bytes.
    pub memory_bytes: usize,
    /// Findings kept from one batch; the rest are counted as cut.
    pub max_findings_per_batch: usize,
    /// Bytes kept of any string in a finding (message, title, evidence).
    pub max_string_bytes: usize,
    /// Evidence pairs kept per finding.
    pub max_evidence: usize,
    /// Log lines per second (token bucket rate) and burst.
    pub log_lines_per_sec: u32,
    /// Log burst size.
    pub log_burst: u32,
    /// Bytes kept of one log line.
    pub max_log_line_bytes: usize,
    /// Failures (traps, timeouts) within `strike_window` that quarantine the plugin.
    pub max_strikes: usize,
    /// Window over which strikes are counted.
    pub strike_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_millis(100),
            init_deadline: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            max_findings_per_batch: 1024,
            max_string_bytes: 4096,
            max_evidence: 32,
            log_lines_per_sec: 50,
            log_burst: 200,
            max_log_line_bytes: 2048,
            max_strikes: 3,
            strike_window: Duration::from_secs(600),
        }
    }
}
