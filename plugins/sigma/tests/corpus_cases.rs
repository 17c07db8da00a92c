//! SigmaHQ Linux rules (read from the corpus) on hand-written positive and
//! negative events: `tests/cases.jsonl`. Every corpus rule file is loaded, as
//! in a real pack, so other rules may fire too; the case's rule must fire on
//! the positive and must not on the negative.

mod common;

use common::*;
use edr_plugin_sigma::Sigma;
use edr_sdk::testing::Harness;
use std::collections::BTreeSet;

#[test]
fn every_case_fires_its_rule_on_the_positive_only() {
    let Some(dir) = corpus() else { return };
    let cases = cases("tests/cases.jsonl");
    let rules: BTreeSet<&str> = cases.iter().map(|c| c.rule.as_str()).collect();
    assert!(rules.len() >= 30, "only {} distinct rules covered", rules.len());

    let mut h = Harness::<Sigma>::with_config(config(rule_files(dir), &[("builtin_rules", "false")])).expect("corpus loads");
    assert_eq!(h.detector().loaded(), 135, "every process_creation, file_event and network_connection rule loads");

    let mut failures = Vec::new();
    for c in &cases {
        // The case names the rule by path and by id: they must agree.
        let text = std::fs::read_to_string(dir.join(&c.rule)).unwrap_or_else(|e| panic!("line {}: {}: {e}", c.line, c.rule));
        let parsed = edr_sigma_core::rsigma_parser::parse_sigma_yaml(&text).unwrap();
        let rule = &parsed.rules[0];
        assert_eq!(rule.id.as_deref(), Some(c.id.as_str()), "line {}: id of {}", c.line, c.rule);

        let pos = h.run_jsonl(&c.positive);
        match pos.iter().find(|f| f.rule_id == c.id) {
            None => failures.push(format!("line {} {} ({}): positive did not fire; fired {:?}", c.line, c.rule, c.note, ids(&pos))),
            Some(f) => {
                assert_eq!(f.title, rule.title, "line {}", c.line);
                assert_eq!(Some(f.author.as_str()), rule.author.as_deref(), "line {}: author credited", c.line);
                assert_eq!(f.event_ids.len(), 1, "line {}", c.line);
                if let Some(r) = rule.references.first() {
                    assert!(f.evidence.contains(&("reference".to_string(), r.clone())), "line {}: reference in evidence", c.line);
                }
                assert!(f.message.contains(&rule.title), "line {}: message names the rule: {}", c.line, f.message);
            }
        }
        let neg = h.run_jsonl(&c.negative);
        if neg.iter().any(|f| f.rule_id == c.id) {
            failures.push(format!("line {} {} ({}): negative fired", c.line, c.rule, c.note));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn each_case_alone_fires_exactly_its_rule() {
    // With only the case's rule loaded, the positive gives one finding (that
    // rule's) and the negative none: nothing else explains the result.
    let Some(dir) = corpus() else { return };
    for c in cases("tests/cases.jsonl") {
        let file = edr_sdk::DataFile { name: c.rule.clone(), content: std::fs::read(dir.join(&c.rule)).unwrap() };
        let mut h = Harness::<Sigma>::with_config(config(vec![file], &[("builtin_rules", "false")])).unwrap();
        let pos = h.run_jsonl(&c.positive);
        assert_eq!(ids(&pos), vec![c.id.as_str()], "line {} {}: positive", c.line, c.rule);
        let neg = h.run_jsonl(&c.negative);
        assert!(neg.is_empty(), "line {} {}: negative fired {:?}", c.line, c.rule, ids(&neg));
    }
}
