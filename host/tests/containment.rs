//! Hostile plugins (plugins/hostile/*) are contained: each misbehaviour ends
//! within its deadline or cap, is classified and counted, leaves the plugin
//! ready for the next batch (or quarantined), and never affects the plugin
//! running beside it.

mod common;
use common::*;
use edr_runtime::{Health, Limits, LoadError, PluginError};
use std::time::{Duration, Instant};

/// Two attacks for the good plugin (writable-exec) and some background.
const ATTACKS: &str = r#"
{"process":{"pid":10,"executable":"/tmp/x","args":["/tmp/x"],"parent":{"pid":9,"executable":"/usr/bin/bash"}}}
{"process":{"pid":11,"executable":"/dev/shm/y","args":["y"],"parent":{"pid":9,"executable":"/usr/bin/bash"}}}
{"process":{"pid":12,"executable":"/usr/bin/ls","args":["ls"],"parent":{"pid":9,"executable":"/usr/bin/bash"}}}
{"event":{"category":"file","action":"modify"},"file":{"path":"/var/log/syslog"},"process":{"pid":13,"executable":"/usr/sbin/rsyslogd"}}
"#;

/// Runs one batch through the hostile plugin and then through a good one,
/// asserting the good one found both attacks.
fn call_beside_good(bad: &mut edr_runtime::Plugin) -> (edr_runtime::CallOutcome, Duration) {
    let evs = events(ATTACKS);
    let start = Instant::now();
    let out = run(bad, &evs);
    let took = start.elapsed();
    let mut good = load("edr-plugin-writable-exec", "writable-exec");
    let ok = run(&mut good, &evs);
    assert!(ok.error.is_none());
    assert_eq!(ok.findings.len(), 2, "the good plugin beside {} lost alerts", bad.name());
    (out, took)
}

fn hostile(name: &str, limits: Limits) -> edr_runtime::Plugin {
    load_with(&format!("edr-hostile-{name}"), &format!("hostile-{name}"), limits)
}

/// Generous bound for "ended at its deadline" on a loaded 2-core CI machine:
/// a runaway call would take seconds or forever.
const SLACK: Duration = Duration::from_millis(900);

#[test]
fn infinite_loop_ends_at_the_deadline() {
    let mut p = hostile("infinite-loop", fast_limits());
    let (out, took) = call_beside_good(&mut p);
    assert_eq!(out.error, Some(PluginError::Timeout { deadline_ms: 50 }));
    assert!(took < Duration::from_millis(50) + SLACK, "took {took:?}");
    assert_eq!(p.metrics().snapshot().timeouts, 1);
}

#[test]
fn a_loop_just_past_the_deadline_is_cut_at_the_deadline() {
    // 150 ms of work against the default 100 ms deadline.
    let mut p = hostile("deadline-overrun", Limits::default());
    let (out, took) = call_beside_good(&mut p);
    assert_eq!(out.error, Some(PluginError::Timeout { deadline_ms: 100 }));
    assert!(took < Duration::from_millis(100) + SLACK, "took {took:?}");
    // With a deadline it can meet, the same plugin succeeds: the deadline is what stopped it.
    let mut p = hostile("deadline-overrun", Limits { call_deadline: Duration::from_millis(2000), ..Limits::default() });
    let (out, took) = call_beside_good(&mut p);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(took >= Duration::from_millis(150));
}

#[test]
fn a_memory_bomb_stops_at_the_cap() {
    let cap = 16 << 20;
    let mut p = hostile("memory-bomb", Limits { memory_bytes: cap, ..fast_limits() });
    let (out, _) = call_beside_good(&mut p);
    assert_eq!(out.error, Some(PluginError::OutOfMemory { cap_bytes: cap }));
    let m = p.metrics().snapshot();
    assert!(m.peak_memory_bytes as usize <= cap, "peak {} over cap {cap}", m.peak_memory_bytes);
    assert!(m.peak_memory_bytes as usize > cap / 2, "the bomb should have reached near the cap, peak {}", m.peak_memory_bytes);
    assert_eq!(m.out_of_memory, 1);
}

#[test]
fn deep_recursion_is_a_stack_overflow_trap() {
    let mut p = hostile("deep-recursion", fast_limits());
    let (out, _) = call_beside_good(&mut p);
    match out.error {
        Some(PluginError::Trap { message }) => assert!(message.contains("stack overflow"), "{message}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
}

#[test]
fn a_panic_is_a_trap() {
    let mut p = hostile("panic", fast_limits());
    let (out, _) = call_beside_good(&mut p);
    assert!(matches!(out.error, Some(PluginError::Trap { .. })), "{:?}", out.error);
}

#[test]
fn a_flood_of_findings_is_capped_and_counted() {
    let mut p = hostile("finding-flood", Limits { call_deadline: Duration::from_secs(5), ..Limits::default() });
    let (out, _) = call_beside_good(&mut p);
    assert!(out.error.is_none(), "{:?}", out.error);
    let cap = Limits::default().max_findings_per_batch;
    assert_eq!(out.findings.len(), cap);
    assert_eq!(p.metrics().snapshot().findings_cut, 200_000 - cap as u64);
}

#[test]
fn huge_strings_are_cut_and_counted() {
    let mut p = hostile("huge-strings", Limits { call_deadline: Duration::from_secs(5), memory_bytes: 128 << 20, ..Limits::default() });
    let (out, _) = call_beside_good(&mut p);
    assert!(out.error.is_none(), "{:?}", out.error);
    let f = &out.findings[0];
    let l = Limits::default();
    assert!(f.message.len() <= l.max_string_bytes + 3, "message {} bytes", f.message.len());
    assert_eq!(f.evidence.len(), l.max_evidence);
    assert!(p.metrics().snapshot().strings_cut >= 2);
}

#[test]
fn an_import_storm_is_rate_limited_and_stopped() {
    let mut p = hostile("import-storm", fast_limits());
    let (out, _) = call_beside_good(&mut p);
    assert_eq!(out.error, Some(PluginError::Timeout { deadline_ms: 50 }));
    let m = p.metrics().snapshot();
    let l = Limits::default();
    assert!(m.logs_dropped > 0, "{m:?}");
    // Only the burst plus what the rate refills in the call got through.
    assert!(m.log_lines <= l.log_burst as u64 + l.log_lines_per_sec as u64, "{m:?}");
}

#[test]
fn wasi_and_unknown_imports_are_refused_at_load_naming_the_import() {
    for (name, import) in [("wasi-import", "wasi:filesystem/types@0.2.0"), ("unknown-import", "edr-internal:host/raw-syscall@0.1.0")] {
        let spec = edr_runtime::PluginSpec::new(name, plugin_wasm(&format!("edr-hostile-{name}")));
        let err = runtime().load(spec, std::sync::Arc::new(edr_runtime::MemoryServices::default())).err().expect("must be refused");
        assert!(matches!(err, LoadError::ForeignImport { .. }), "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(import) || msg.contains("wasi:sockets/tcp@0.2.0"), "{name}: {msg}");
        assert!(msg.contains("may import only edr:plugin"), "{msg}");
    }
}

#[test]
fn a_plugin_hanging_in_init_fails_to_load_at_the_init_deadline() {
    let start = Instant::now();
    let spec = edr_runtime::PluginSpec { limits: fast_limits(), ..edr_runtime::PluginSpec::new("init-hang", plugin_wasm("edr-hostile-init-hang")) };
    let err = runtime().load(spec, std::sync::Arc::new(edr_runtime::MemoryServices::default())).err().expect("must fail");
    assert!(matches!(err, LoadError::InitFailed { source: PluginError::Timeout { deadline_ms: 500 }, .. }), "{err}");
    assert!(start.elapsed() < Duration::from_millis(500) + SLACK, "took {:?}", start.elapsed());
}

#[test]
fn state_corrupted_by_a_trap_is_never_seen_again() {
    let mut p = hostile("corrupt-after-trap", fast_limits());
    let clean = events(
        r#"{"process":{"pid":1,"executable":"/bin/a"}}
{"process":{"pid":2,"executable":"/bin/b"}}"#,
    );
    let poison = events(
        r#"{"process":{"pid":3,"executable":"/bin/c"}}
{"process":{"pid":4,"executable":"/poison"}}"#,
    );
    let out = run(&mut p, &clean);
    assert_eq!(out.findings.len(), 2);
    // The trap lands between the two halves of an update.
    assert!(matches!(run(&mut p, &poison).error, Some(PluginError::Trap { .. })));
    // The next batch runs on a fresh instance: the half-update is gone.
    let out = run(&mut p, &clean);
    assert!(out.error.is_none());
    let rules: Vec<&str> = out.findings.iter().map(|f| f.rule_id.as_str()).collect();
    assert_eq!(rules, vec!["hostile.ledger-ok", "hostile.ledger-ok"], "{:?}", out.findings);
    assert!(out.findings[0].message.contains("ledger at 1"), "a fresh instance starts over: {}", out.findings[0].message);
}

#[test]
fn repeated_failures_quarantine_the_plugin_until_reenabled() {
    let mut bad = hostile("panic", fast_limits());
    let evs = events(ATTACKS);
    for _ in 0..3 {
        assert!(run(&mut bad, &evs).error.is_some());
    }
    assert!(matches!(bad.health(), Health::Quarantined { strikes: 3, .. }), "{:?}", bad.health());
    let out = run(&mut bad, &evs);
    assert!(matches!(out.error, Some(PluginError::Quarantined { .. })));
    // Quarantined: not called at all; the events it would have seen are counted.
    assert_eq!(bad.metrics().snapshot().skipped_events, 4, "3 execs and 1 file event");
    bad.reenable();
    assert!(matches!(run(&mut bad, &evs).error, Some(PluginError::Trap { .. })));
}

#[test]
fn a_failed_call_leaves_the_plugin_ready_for_the_next_batch() {
    for (package, expected) in [("edr-hostile-panic", "trap"), ("edr-hostile-infinite-loop", "timeout")] {
        let mut bad = load_with(package, package, fast_limits());
        for _ in 0..2 {
            assert_eq!(run(&mut bad, &events(ATTACKS)).error.map(|e| e.kind()), Some(expected));
        }
        let m = bad.metrics().snapshot();
        assert_eq!(m.errors, 2);
        assert_eq!(m.reinstantiations, 1, "{package}: the second call rebuilt the poisoned instance");
    }
}
