//! The plugin's behaviour: the field mapping, what a finding carries, rules
//! that do not load beside rules that do, and the settings.

mod common;

use common::*;
use edr_plugin_sigma::{Sigma, BUILTIN_RULES};
use edr_sdk::testing::{close, connect, exec, file, model, Harness};
use edr_sdk::{LogLevel, Severity};

fn rule(id: &str, category: &str, detection: &str) -> String {
    format!("title: Probe {id}\nid: {id}\nlogsource:\n    product: linux\n    category: {category}\ndetection:\n{detection}\nlevel: low\n")
}

/// One probe rule per `(field, value)`: `Field: value`, so each probe fires
/// only when that one field carries that value.
fn probes(category: &str, fields: &[(&str, &str)]) -> Vec<edr_sdk::DataFile> {
    fields
        .iter()
        .map(|(f, v)| yaml(&format!("{f}.yml"), &rule(&format!("probe-{f}"), category, &format!("    selection:\n        {f}: {v}\n    condition: selection"))))
        .collect()
}

fn harness(files: Vec<edr_sdk::DataFile>) -> Harness<Sigma> {
    Harness::<Sigma>::with_config(config(files, &[("builtin_rules", "false")])).unwrap()
}

fn sorted(findings: &[edr_sdk::Finding]) -> Vec<String> {
    let mut v: Vec<String> = findings.iter().map(|f| f.rule_id.clone()).collect();
    v.sort();
    v
}

fn expect(fields: &[(&str, &str)]) -> Vec<String> {
    let mut v: Vec<String> = fields.iter().map(|(f, _)| format!("probe-{f}")).collect();
    v.sort();
    v
}

const PROCESS: &[(&str, &str)] = &[
    ("Image", "'/usr/bin/curl'"),
    ("CommandLine", "'curl -o /tmp/x http://e.com/x'"),
    ("CurrentDirectory", "'/home/alice'"),
    ("User", "'alice'"),
    ("UserId", "1000"),
    ("ProcessId", "4242"),
    ("ParentImage", "'/usr/bin/bash'"),
    ("ParentCommandLine", "'bash -i'"),
    ("ParentProcessId", "4200"),
];

#[test]
fn process_creation_fields() {
    let mut h = harness(probes("process_creation", PROCESS));
    let e = exec("/usr/bin/curl", &["curl", "-o", "/tmp/x", "http://e.com/x"])
        .parent("/usr/bin/bash", &["bash", "-i"])
        .cwd("/home/alice")
        .user(1000, "alice")
        .pid(4242, 4200)
        .build();
    assert_eq!(sorted(&h.run(&[e])), expect(PROCESS));
    // Every field different: nothing fires.
    let other = exec("/usr/bin/wget", &["wget", "x"]).parent("/usr/bin/zsh", &["zsh"]).cwd("/").user(0, "root").pid(1, 2).build();
    assert!(h.run(&[other]).is_empty());
}

#[test]
fn process_fields_from_ecs_and_unknown_values_are_absent() {
    let rules = vec![
        yaml("a.yml", &rule("user-null", "process_creation", "    selection:\n        Image|endswith: '/id'\n        User: null\n    condition: selection")),
        yaml(
            "b.yml",
            &rule(
                "no-pe-metadata",
                "process_creation",
                "    selection:\n        Image|endswith: '/id'\n        OriginalFileName|exists: false\n    condition: selection",
            ),
        ),
        yaml("c.yml", &rule("pe-metadata", "process_creation", "    selection:\n        OriginalFileName: 'id'\n    condition: selection")),
    ];
    let mut h = harness(rules);
    let hits = h.run_jsonl(r#"{"event":{"category":["process"]},"process":{"executable":"/usr/bin/id","args":["id"]}}"#);
    assert_eq!(sorted(&hits), vec!["no-pe-metadata", "user-null"]);
}

#[test]
fn file_fields_and_operations() {
    const FILE: &[(&str, &str)] = &[
        ("TargetFilename", "'/usr/local/bin/tool'"),
        ("SourceFilename", "'/tmp/tool.part'"),
        ("Image", "'/usr/bin/mv'"),
        ("ProcessId", "77"),
        ("FileOperation", "'rename'"),
        ("FileMode", "'4755'"),
        ("SetuidBit", "'true'"),
        ("SetgidBit", "'false'"),
    ];
    let mut h = harness(probes("file_event", FILE));
    let e = file(model::FileOp::Rename, "/usr/local/bin/tool").renamed_from("/tmp/tool.part").by(77, "/usr/bin/mv").mode(0o104755).build();
    assert_eq!(sorted(&h.run(&[e])), expect(FILE));
    // UserId comes from ECS user.id.
    let mut h = harness(probes("file_event", &[("UserId", "1000")]));
    let hits = h.run_jsonl(r#"{"event":{"category":["file"],"action":"create"},"file":{"path":"/tmp/a"},"user":{"id":"1000"}}"#);
    assert_eq!(ids(&hits), vec!["probe-UserId"]);
}

#[test]
fn file_operations_map_to_categories() {
    let on = |category: &str| {
        yaml(&format!("{category}.yml"), &rule(category, category, "    selection:\n        TargetFilename: '/etc/x'\n    condition: selection"))
    };
    let mut h = harness(vec![on("file_event"), on("file_delete"), on("file_access")]);
    let run = |h: &mut Harness<Sigma>, op| ids(&h.run(&[file(op, "/etc/x").by(9, "/usr/bin/x").build()])).into_iter().map(str::to_string).collect::<Vec<_>>();
    use model::FileOp::*;
    for op in [Create, Modify, Rename, Chmod] {
        assert_eq!(run(&mut h, op), vec!["file_event"], "{op:?}");
    }
    assert_eq!(run(&mut h, Delete), vec!["file_delete"]);
    assert_eq!(run(&mut h, Read), vec!["file_access"]);
    assert!(run(&mut h, Attrib).is_empty(), "attrib goes nowhere");
    // Without a known mode, the mode fields are absent.
    let mut h = harness(vec![yaml(
        "m.yml",
        &rule("mode-null", "file_event", "    selection:\n        FileMode: null\n        SetuidBit: null\n    condition: selection"),
    )]);
    assert_eq!(ids(&h.run(&[file(Create, "/tmp/a").build()])), vec!["mode-null"]);
    assert!(h.run(&[file(Create, "/tmp/a").mode(0o644).build()]).is_empty());
}

#[test]
fn network_fields_connect_and_accept() {
    const OUT: &[(&str, &str)] = &[
        ("Image", "'/usr/bin/python3'"),
        ("ProcessId", "4242"),
        ("UserId", "1000"),
        ("Protocol", "'tcp'"),
        ("Initiated", "'true'"),
        ("SourceIp", "'10.0.0.2'"),
        ("SourcePort", "40000"),
        ("SourceIsIpv6", "'false'"),
        ("DestinationIp", "'198.51.100.7'"),
        ("DestinationPort", "'4444'"),
        ("DestinationIsIpv6", "'false'"),
    ];
    let mut h = harness(probes("network_connection", OUT));
    assert_eq!(sorted(&h.run(&[connect("/usr/bin/python3", "198.51.100.7", 4444)])), expect(OUT));

    // An accepted UDP connection over IPv6: the peer is the source.
    const IN: &[(&str, &str)] = &[
        ("Initiated", "'false'"),
        ("Protocol", "'udp'"),
        ("SourceIp", "'2001:db8::7'"),
        ("SourcePort", "53000"),
        ("SourceIsIpv6", "'true'"),
        ("DestinationIp", "'2001:db8::1'"),
        ("DestinationPort", "53"),
    ];
    let mut h = harness(probes("network_connection", IN));
    let accept = r#"{"event":{"category":["network"],"action":"connection_accepted"},"network":{"transport":"udp"},"source":{"ip":"2001:db8::7","port":53000},"destination":{"ip":"2001:db8::1","port":53},"process":{"pid":1,"executable":"/usr/sbin/named"}}"#;
    assert_eq!(sorted(&h.run_jsonl(accept)), expect(IN));
    // A listener has no peer: not a network_connection.
    let listen = r#"{"event":{"category":["network"],"action":"listen"},"destination":{"ip":"0.0.0.0","port":53},"network":{"transport":"udp"}}"#;
    assert!(h.run_jsonl(listen).is_empty());
    // Nor is a close: the connection was matched at its connect.
    let mut h = harness(probes("network_connection", OUT));
    assert!(h.run(&[close("/usr/bin/python3", "198.51.100.7", 4444, 6, 7)]).is_empty());
    assert_eq!(sorted(&h.run(&[connect("/usr/bin/python3", "198.51.100.7", 4444), close("/usr/bin/python3", "198.51.100.7", 4444, 6, 7)])), expect(OUT));
}

#[test]
fn numbers_compare_as_numbers_and_as_text() {
    let rules = vec![
        yaml("gt.yml", &rule("port-gt", "network_connection", "    selection:\n        DestinationPort|gt: 1024\n    condition: selection")),
        yaml("cidr.yml", &rule("cidr", "network_connection", "    selection:\n        DestinationIp|cidr: '198.51.100.0/24'\n    condition: selection")),
        yaml("re.yml", &rule("mode-re", "file_event", "    selection:\n        FileMode|re: '^[2367]'\n    condition: selection")),
    ];
    let mut h = harness(rules);
    assert_eq!(sorted(&h.run(&[connect("/x", "198.51.100.7", 4444)])), vec!["cidr", "port-gt"]);
    assert!(h.run(&[connect("/x", "192.0.2.1", 443)]).is_empty());
    assert_eq!(ids(&h.run(&[file(model::FileOp::Chmod, "/tmp/x").mode(0o2755).build()])), vec!["mode-re"]);
}

#[test]
fn keyword_rules_search_every_string_field() {
    let mut h = harness(vec![yaml("k.yml", &rule("kw", "process_creation", "    keywords:\n        - 'nightmare'\n    condition: keywords"))]);
    assert_eq!(ids(&h.run(&[exec("/usr/bin/x", &["x", "--name=Nightmare"]).build()])), vec!["kw"]);
    assert_eq!(ids(&h.run(&[exec("/usr/bin/x", &["x"]).parent("/opt/nightmare/bin/y", &["y"]).build()])), vec!["kw"]);
    assert!(h.run(&[exec("/usr/bin/x", &["x", "dream"]).build()]).is_empty());
}

#[test]
fn finding_carries_id_title_severity_techniques_author_and_reference() {
    let yaml_text = "title: Curl To Paste Site
id: 0b0c2a1e-1111-4c8e-9a55-5d3a1f3b9e01
status: test
description: test rule
references:
    - https://example.org/first
    - https://example.org/second
author: Jane Doe (Example Corp)
tags:
    - attack.command-and-control
    - attack.t1105
    - attack.t1059.004
    - attack.s0002
    - attack.g0032
    - cve.2021-44228
logsource:
    product: linux
    category: process_creation
detection:
    selection_img:
        Image|endswith: '/curl'
    selection_site:
        CommandLine|contains: 'pastebin.com'
    condition: all of selection_*
level: critical
";
    let mut h = harness(vec![yaml("r.yaml", yaml_text)]);
    let hits = h.run(&[exec("/usr/bin/curl", &["curl", "-s", "https://pastebin.com/raw/abc"]).build()]);
    assert_eq!(hits.len(), 1);
    let f = &hits[0];
    assert_eq!(f.rule_id, "0b0c2a1e-1111-4c8e-9a55-5d3a1f3b9e01");
    assert_eq!(f.title, "Curl To Paste Site");
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.techniques, vec!["T1105", "T1059.004"]);
    assert_eq!(f.author, "Jane Doe (Example Corp)");
    assert_eq!(f.event_ids, vec![1]);
    assert!(f.evidence.contains(&("reference".into(), "https://example.org/first".into())));
    assert!(!f.evidence.iter().any(|(_, v)| v == "https://example.org/second"), "one reference");
    assert!(f.evidence.contains(&("rule_file".into(), "r.yaml".into())));
    assert!(f.evidence.contains(&("logsource".into(), "linux/process_creation".into())));
    assert!(f.evidence.contains(&("match.Image".into(), "/usr/bin/curl".into())), "{:?}", f.evidence);
    assert!(f.message.starts_with("Sigma rule \"Curl To Paste Site\" matched"), "{}", f.message);
    assert!(f.message.contains("matched (selection_img, selection_site): "), "selections, sorted: {}", f.message);
    assert!(f.message.contains("CommandLine=\"curl -s https://pastebin.com/raw/abc\""), "{}", f.message);
}

#[test]
fn severity_levels_and_defaults() {
    let levels = [
        ("informational", Severity::Informational),
        ("low", Severity::Low),
        ("medium", Severity::Medium),
        ("high", Severity::High),
        ("critical", Severity::Critical),
    ];
    for (level, severity) in levels {
        let text = format!("title: L {level}\nid: l-{level}\nauthor: a\nlogsource:\n    product: linux\n    category: process_creation\ndetection:\n    s:\n        Image: '/x'\n    condition: s\nlevel: {level}\n");
        let mut h = harness(vec![yaml("l.yml", &text)]);
        assert_eq!(h.run(&[exec("/x", &["x"]).build()])[0].severity, severity, "{level}");
    }
    // No id, no level, no author, no tags: the title is the id, medium, "unknown".
    let bare = "title: Bare Rule\nlogsource:\n    product: linux\n    category: process_creation\ndetection:\n    s:\n        Image: '/x'\n    condition: s\n";
    let mut h = harness(vec![yaml("bare.yml", bare)]);
    let f = &h.run(&[exec("/x", &["x"]).build()])[0];
    assert_eq!((f.rule_id.as_str(), f.severity, f.author.as_str()), ("Bare Rule", Severity::Medium, "unknown"));
    assert!(f.techniques.is_empty());
    assert!(!f.evidence.iter().any(|(k, _)| k == "reference"));
}

#[test]
fn broken_rules_beside_good_ones() {
    let good = rule("good", "process_creation", "    selection:\n        Image|endswith: '/nc'\n    condition: selection");
    let files = vec![
        yaml("good.yml", &good),
        yaml("bad_yaml.yml", "title: [unclosed\nlogsource: {product: linux"),
        yaml("bad_modifier.yml", &rule("bad-mod", "process_creation", "    selection:\n        Image|containz: 'x'\n    condition: selection")),
        yaml("bad_regex.yml", &rule("bad-re", "process_creation", "    selection:\n        CommandLine|re: '(unclosed'\n    condition: selection")),
        yaml("bad_condition.yml", &rule("bad-cond", "process_creation", "    selection:\n        Image: 'x'\n    condition: selection and not filter")),
        yaml(
            "auditd.yml",
            "title: Auditd\nid: aud\nlogsource:\n    product: linux\n    service: auditd\ndetection:\n    s:\n        type: EXECVE\n    condition: s\n",
        ),
        yaml("windows.yml", &rule("win", "process_creation", "    s:\n        Image: 'x'\n    condition: s").replace("product: linux", "product: windows")),
        yaml("duplicate.yml", &good),
        yaml(
            "multi.yaml",
            &format!(
                "{}\n---\n{}",
                rule("multi-good", "file_event", "    s:\n        TargetFilename: '/etc/x'\n    condition: s"),
                "title: no detection\nlogsource:\n    product: linux\n    category: file_event\n"
            ),
        ),
        yaml("notes.txt", "not a rule file: ignored"),
        edr_sdk::DataFile { name: "binary.yml".into(), content: vec![0xff, 0xfe, 0x00] },
    ];
    let mut h = harness(files);
    let d = h.detector();
    assert_eq!(d.loaded(), 2, "good and multi-good");
    assert_eq!(d.failed(), 9, "{:#?}", d.outcomes());
    assert_eq!(d.skipped(), 0);
    let kinds: Vec<(&str, &str)> = d.outcomes().iter().filter_map(|o| o.error.as_ref().map(|e| (o.file.as_str(), e.kind()))).collect();
    for expected in [
        ("bad_yaml.yml", "parse_error"),
        ("bad_modifier.yml", "unsupported_modifier"),
        ("bad_regex.yml", "compile_error"),
        ("bad_condition.yml", "compile_error"),
        ("auditd.yml", "unsupported_logsource"),
        ("windows.yml", "unsupported_logsource"),
        ("duplicate.yml", "duplicate_id"),
        ("multi.yaml", "parse_error"),
        ("binary.yml", "not_utf8"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} not in {kinds:?}");
    }
    let logs = h.logs();
    assert!(logs.iter().any(|(l, m)| *l == LogLevel::Info && m.contains("loaded 2 rule(s)") && m.contains("9 not loaded")), "{logs:?}");
    for file in ["bad_yaml.yml", "bad_modifier.yml", "bad_regex.yml", "auditd.yml", "duplicate.yml", "binary.yml"] {
        assert!(logs.iter().any(|(l, m)| *l == LogLevel::Warn && m.contains(file)), "no warning for {file}: {logs:?}");
    }
    // The good rules work.
    assert_eq!(ids(&h.run(&[exec("/usr/bin/nc", &["nc", "-l", "4444"]).build()])), vec!["good"]);
    assert_eq!(ids(&h.run(&[file(model::FileOp::Create, "/etc/x").build()])), vec!["multi-good"]);
}

#[test]
fn parse_errors_carry_a_position() {
    let files = vec![yaml("bad_yaml.yml", "title: x\nlogsource:\n  product: linux\n detection: [\n")];
    let err = Harness::<Sigma>::with_config(config(files, &[("builtin_rules", "false")])).err().expect("nothing loads");
    assert!(err.contains("bad_yaml.yml") && err.contains("line "), "{err}");
}

#[test]
fn init_fails_only_when_no_rule_loads() {
    let only_bad =
        vec![yaml("auditd.yml", "title: A\nlogsource:\n    product: linux\n    service: auditd\ndetection:\n    s:\n        type: PATH\n    condition: s\n")];
    let err = Harness::<Sigma>::with_config(config(only_bad.clone(), &[("builtin_rules", "false")])).err().expect("must fail");
    assert!(err.starts_with("no Sigma rule loaded: 1 rule file(s)"), "{err}");
    assert!(err.contains("auditd.yml") && err.contains("unsupported logsource"), "{err}");
    let err = Harness::<Sigma>::with_config(config(vec![], &[("builtin_rules", "false")])).err().expect("must fail");
    assert!(err.contains("0 rule file(s)") && err.contains("built-in rules disabled"), "{err}");
    // The same bad file beside the built-in rules: init succeeds.
    let h = Harness::<Sigma>::with_config(config(only_bad, &[])).unwrap();
    assert_eq!((h.detector().loaded(), h.detector().failed()), (BUILTIN_RULES.len(), 1));
}

#[test]
fn categories_setting() {
    let files = vec![
        yaml("p.yml", &rule("p", "process_creation", "    s:\n        Image: '/x'\n    condition: s")),
        yaml("f.yml", &rule("f", "file_event", "    s:\n        TargetFilename: '/x'\n    condition: s")),
    ];
    let mut h =
        Harness::<Sigma>::with_config(config(files.clone(), &[("categories", "process_creation, network_connection"), ("builtin_rules", "false")])).unwrap();
    assert_eq!((h.detector().loaded(), h.detector().skipped(), h.detector().failed()), (1, 1, 0));
    assert_eq!(ids(&h.run(&[exec("/x", &["x"]).build()])), vec!["p"]);
    assert!(h.run(&[file(model::FileOp::Create, "/x").build()]).is_empty());

    let err = Harness::<Sigma>::with_config(config(files.clone(), &[("categories", "process_creation,auditd")])).err().unwrap();
    assert!(err.contains("unknown category `auditd`"), "{err}");
    let err = Harness::<Sigma>::with_config(config(files.clone(), &[("categories", " , ")])).err().unwrap();
    assert!(err.contains("`categories` is empty"), "{err}");
    let err = Harness::<Sigma>::with_config(config(files, &[("builtin_rules", "maybe")])).err().unwrap();
    assert!(err.contains("builtin_rules"), "{err}");
}

#[test]
fn pack_rule_replaces_a_builtin_rule_with_the_same_id() {
    let id = "a1728ab3-da71-4cb6-a646-98fa47ad13de"; // the built-in ld.so.preload rule
    let mine = format!("title: Our Own Preload Rule\nid: {id}\nauthor: ops\nlogsource:\n    product: linux\n    category: file_event\ndetection:\n    s:\n        TargetFilename: '/etc/ld.so.preload'\n    condition: s\nlevel: low\n");
    let mut h = Harness::<Sigma>::with_config(config(vec![yaml("preload.yml", &mine)], &[])).unwrap();
    let hits = h.run(&[file(model::FileOp::Modify, "/etc/ld.so.preload").build()]);
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].title.as_str(), hits[0].author.as_str(), hits[0].severity), ("Our Own Preload Rule", "ops", Severity::Low));
}

#[test]
fn global_action_and_multiple_documents() {
    let text = "action: global
logsource:
    product: linux
    category: process_creation
author: Multi
level: high
---
title: First
id: first
detection:
    s:
        Image|endswith: '/one'
    condition: s
---
title: Second
id: second
detection:
    s:
        Image|endswith: '/two'
    condition: s
";
    let mut h = harness(vec![yaml("multi.yml", text)]);
    assert_eq!(h.detector().loaded(), 2);
    let hits = h.run(&[exec("/bin/one", &["one"]).build(), exec("/bin/two", &["two"]).build(), exec("/bin/three", &["three"]).build()]);
    assert_eq!(ids(&hits), vec!["first", "second"]);
    assert_eq!(hits[1].event_ids, vec![2]);
    assert!(hits.iter().all(|f| f.author == "Multi" && f.severity == Severity::High));
}

#[test]
fn exits_and_logins_are_ignored_and_batches_keep_event_ids() {
    let mut h = harness(vec![yaml("p.yml", &rule("p", "process_creation", "    s:\n        Image|endswith: '/nc'\n    condition: s"))]);
    let jsonl = r#"{"event":{"category":["process"],"type":["end"]},"process":{"pid":5,"exit_code":0}}
{"event":{"category":["authentication"],"outcome":"success"},"user":{"name":"nc"},"service":{"name":"sshd"}}
{"event":{"id":"77","category":["process"]},"process":{"executable":"/usr/bin/nc","args":["nc"]}}"#;
    let hits = h.run_jsonl(jsonl);
    assert_eq!(ids(&hits), vec!["p"]);
    assert_eq!(hits[0].event_ids, vec![77]);
}
