//! `check_dir` (the `edr sigma check DIR` command) against the SigmaHQ Linux
//! corpus and against a directory of broken rules.

use edr_sigma_core::{check_dir, CategoryCounts};

#[test]
fn corpus_report_counts() {
    let Some(dir) = edr_testkit::sigmahq_linux_rules() else { return };
    let report = check_dir(&dir);
    let s = &report.summary;
    assert_eq!(report.files, 210);
    assert_eq!((s.loaded, s.not_loaded), (135, 75), "{}", report.render_text());
    let counts = |label: &str| s.by_logsource.get(label).copied().unwrap_or_default();
    // Every rule of the served categories loads.
    assert_eq!(counts("linux/process_creation"), CategoryCounts { loaded: 122, not_loaded: 0 });
    assert_eq!(counts("linux/file_event"), CategoryCounts { loaded: 8, not_loaded: 0 });
    assert_eq!(counts("linux/network_connection"), CategoryCounts { loaded: 5, not_loaded: 0 });
    // What cannot be served: auditd (53) and the builtin log rules (22: 15
    // without any category, 7 of other log services).
    assert_eq!(counts("linux/service:auditd"), CategoryCounts { loaded: 0, not_loaded: 53 });
    assert_eq!(counts("linux/(no category)"), CategoryCounts { loaded: 0, not_loaded: 15 });
    let other_services: usize =
        s.by_logsource.iter().filter(|(k, _)| k.starts_with("linux/service:") && *k != "linux/service:auditd").map(|(_, c)| c.not_loaded).sum();
    assert_eq!(other_services, 7);
    assert_eq!(s.by_reason.get("unsupported_logsource"), Some(&75));
    assert_eq!(s.by_reason.len(), 1, "{:?}", s.by_reason);
    for r in report.rules.iter().filter(|r| !r.loaded()) {
        assert!(r.file.starts_with("auditd/") || r.file.starts_with("builtin/"), "{} not loaded", r.file);
    }
    // Rules that load but use fields we never set are flagged.
    assert_eq!(s.with_warnings, 5, "{}", report.render_text());
    let ngrok = report.rules.iter().find(|r| r.file.ends_with("net_connection_lnx_ngrok_tunnel.yml")).unwrap();
    assert!(ngrok.warnings[0].contains("DestinationHostname"), "{:?}", ngrok.warnings);

    let text = report.render_text();
    assert!(text.contains("210 file(s), 135 rule(s) load, 75 do not"), "{text}");
    assert!(text.contains("linux/service:auditd"), "{text}");
    assert!(
        text.contains("auditd/path/lnx_auditd_ld_so_preload_mod.yml: \"Modification of ld.so.preload\": unsupported logsource linux/service:auditd"),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["summary"]["loaded"], 135);
    assert_eq!(json["summary"]["by_logsource"]["linux/process_creation"]["loaded"], 122);
    assert_eq!(json["rules"].as_array().unwrap().len(), 210);
    let auditd = json["rules"].as_array().unwrap().iter().find(|r| r["logsource"] == "linux/service:auditd").unwrap();
    assert_eq!(auditd["status"], "not_loaded");
    assert_eq!(auditd["reason"]["kind"], "unsupported_logsource");
    assert!(auditd["reason"]["message"].as_str().unwrap().contains("unsupported logsource"));
}

#[test]
fn broken_rules_report() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let head = "logsource:\n    product: linux\n    category: process_creation\n";
    write("ok.yml", &format!("title: Ok\nid: ok\n{head}detection:\n    s:\n        Image: '/x'\n    condition: s\n"));
    write("sub/bad_yaml.yaml", "title: Bad\nlogsource:\n  product: linux\n detection: [\n");
    write("bad_modifier.yml", &format!("title: Bad Modifier\n{head}detection:\n    s:\n        Image|containz: 'x'\n    condition: s\n"));
    write("expand.yml", &format!("title: Expand\n{head}detection:\n    s:\n        Image|expand: '%bins%'\n    condition: s\n"));
    write("bad_condition.yml", &format!("title: Bad Condition\n{head}detection:\n    s:\n        Image: 'x'\n    condition: s and (\n"));
    write("bad_regex.yml", &format!("title: Bad Regex\n{head}detection:\n    s:\n        CommandLine|re: '(x'\n    condition: s\n"));
    write("builtin.yml", "title: Builtin\nlogsource:\n    product: linux\ndetection:\n    keywords:\n        - 'x'\n    condition: keywords\n");
    write("corr.yml", "title: Corr\nid: corr\ncorrelation:\n    type: event_count\n    rules:\n        - ok\n    group-by:\n        - User\n    timespan: 5m\n    condition:\n        gte: 10\n");
    write("bad_level.yml", &format!("title: Bad Level\nid: bad-level\n{head}detection:\n    s:\n        Image: '/y'\n    condition: s\nlevel: severe\n"));
    write("readme.md", "not a rule");
    let report = check_dir(dir.path());
    let text = report.render_text();
    assert_eq!(report.files, 9, "{text}");
    assert_eq!((report.summary.loaded, report.summary.not_loaded), (2, 7), "{text}");
    // An invalid level is a warning: the rule loads (with severity medium).
    let bad_level = report.rules.iter().find(|r| r.file == "bad_level.yml").unwrap();
    assert!(bad_level.loaded(), "{text}");
    assert_eq!(bad_level.warnings, vec!["invalid level: 'severe' (ignored)"], "{text}");
    assert!(text.contains("Loaded with warnings: 1"), "{text}");
    let reason = |file: &str| {
        let r = report.rules.iter().find(|r| r.file == file).unwrap_or_else(|| panic!("{file} missing: {text}"));
        r.error.clone().unwrap_or_else(|| panic!("{file} loaded"))
    };
    match reason("sub/bad_yaml.yaml") {
        edr_sigma_core::LoadError::Parse { line, column, .. } => assert_eq!((line, column.is_some()), (Some(4), true), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(reason("bad_modifier.yml").kind(), "unsupported_modifier");
    assert!(reason("bad_modifier.yml").to_string().contains("`containz`"));
    assert_eq!(reason("expand.yml").kind(), "unsupported_modifier");
    assert!(reason("expand.yml").to_string().contains("placeholders"));
    assert_eq!(reason("bad_condition.yml").kind(), "parse_error");
    assert_eq!(reason("bad_regex.yml").kind(), "compile_error");
    assert_eq!(reason("builtin.yml").kind(), "unsupported_logsource");
    assert!(reason("builtin.yml").to_string().contains("linux/(no category)"));
    assert_eq!(reason("corr.yml").kind(), "unsupported_rule_type");
    println!("{text}");
}

#[test]
fn missing_directory_is_reported() {
    let report = check_dir(std::path::Path::new("/nonexistent/sigma/rules"));
    assert_eq!(report.files, 0);
    assert_eq!(report.summary.not_loaded, 1);
    assert_eq!(report.rules[0].error.as_ref().unwrap().kind(), "unreadable");
    assert!(report.render_text().contains("cannot read"), "{}", report.render_text());
}
