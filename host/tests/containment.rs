//! A plugin that traps or never returns must not stop the others.

mod common;
use common::*;
use edr_runtime::{Health, PluginError};
use std::time::Instant;

const ATTACKS: &str = r#"
{"process":{"pid":10,"executable":"/tmp/x","args":["/tmp/x"],"parent":{"pid":9,"executable":"/usr/bin/bash"}}}
{"process":{"pid":11,"executable":"/dev/shm/y","args":["y"],"parent":{"pid":9,"executable":"/usr/bin/bash"}}}
"#;

#[test]
fn trapping_and_looping_plugins_are_contained_and_rebuilt() {
    let evs = events(ATTACKS);
    let mut good = load("edr-plugin-writable-exec", "writable-exec");
    for (package, expected) in [("edr-hostile-panic", "trap"), ("edr-hostile-infinite-loop", "timeout")] {
        let mut bad = load_with(package, package, fast_limits());
        for round in 1..=2 {
            let start = Instant::now();
            let out = run(&mut bad, &evs);
            let took = start.elapsed();
            let err = out.error.expect("hostile plugin must fail");
            assert_eq!(err.kind(), expected, "{package}: {err}");
            if let PluginError::Timeout { deadline_ms } = err {
                assert_eq!(deadline_ms, 50);
                // The deadline holds (generous margin for a loaded CI machine).
                assert!(took.as_millis() < 1000, "{package} took {took:?}");
            }
            // The good plugin beside it still sees everything.
            let ok = run(&mut good, &evs);
            assert!(ok.error.is_none());
            assert_eq!(ok.findings.len(), 2, "round {round} after {package}");
        }
        let m = bad.metrics().snapshot();
        assert_eq!(m.errors, 2, "{package}");
        // The second call rebuilt the instance that the first call poisoned.
        assert_eq!(m.reinstantiations, 1, "{package}");
    }
}

#[test]
fn repeated_failures_quarantine_the_plugin() {
    let mut bad = load_with("edr-hostile-panic", "panic", fast_limits());
    let evs = events(ATTACKS);
    for _ in 0..3 {
        assert!(run(&mut bad, &evs).error.is_some());
    }
    assert!(matches!(bad.health(), Health::Quarantined { strikes: 3, .. }), "{:?}", bad.health());
    let out = run(&mut bad, &evs);
    assert!(matches!(out.error, Some(PluginError::Quarantined { .. })));
    assert_eq!(bad.metrics().snapshot().skipped_events, 2);
    // An operator can lift the quarantine; the plugin is called again.
    bad.reenable();
    assert!(matches!(run(&mut bad, &evs).error, Some(PluginError::Trap { .. })));
}
