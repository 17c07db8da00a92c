//! The compiled rules (`edr_sigma_core::compiled`) against the interpreted
//! `rsigma` engine: the same results, rule by rule, on hostile rules, on
//! events generated from rule literals, and on every SigmaHQ Linux rule.

use edr_sigma_core::compiled::CompiledRules;
use edr_sigma_core::rsigma_eval::{compile_rule, CompiledDetection, CompiledMatcher, CompiledRule, Engine, EvaluationResult, JsonEvent};
use edr_sigma_core::rsigma_parser::parse_sigma_yaml;
use serde_json::{json, Map, Value};
use std::path::Path;

fn compile(yaml: &str) -> Vec<CompiledRule> {
    let c = parse_sigma_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    c.rules.iter().map(|r| compile_rule(r).unwrap_or_else(|e| panic!("{}: {e}", r.title))).collect()
}

/// What a result says, for comparing: rule, selections and matched fields.
fn summary(rs: &[EvaluationResult]) -> Vec<String> {
    rs.iter()
        .map(|m| {
            let d = m.as_detection().expect("detection");
            let mut sel = d.matched_selections.clone();
            sel.sort();
            let fields: Vec<String> = d.matched_fields.iter().map(|f| format!("{}={}", f.field, f.value)).collect();
            format!("{}|{}|{:?}|{:?}", m.header.rule_title, m.header.rule_id.clone().unwrap_or_default(), sel, fields)
        })
        .collect()
}

struct Pair {
    engine: Engine,
    compiled: CompiledRules,
    matched: usize,
    events: usize,
}

impl Pair {
    fn new(rules: Vec<CompiledRule>) -> Self {
        let mut engine = Engine::new();
        engine.extend_compiled_rules(rules.clone());
        Pair { engine, compiled: CompiledRules::new(rules), matched: 0, events: 0 }
    }

    /// Asserts both agree on `event`; returns the matching rule titles.
    fn check(&mut self, event: &Value) -> Vec<String> {
        let e = JsonEvent::borrow(event);
        let want = self.engine.evaluate(&e);
        let mut got = Vec::new();
        self.compiled.evaluate(&e, &mut got);
        assert_eq!(summary(&got), summary(&want), "event {event}");
        self.events += 1;
        self.matched += usize::from(!want.is_empty());
        want.iter().map(|m| m.header.rule_title.clone()).collect()
    }
}

const HEAD: &str = "logsource: {product: linux, category: process_creation}\n";

fn rule(title: &str, detection: &str) -> String {
    format!("---\ntitle: {title}\n{HEAD}detection:\n{detection}\n")
}

#[test]
fn negations_and_branches_without_literals_are_never_pruned() {
    let yaml = [
        rule("not", "  sel: {CommandLine|contains: evil}\n  condition: not sel"),
        rule("one-of-them", "  a: {CommandLine|contains: evil}\n  b: {Image|re: '^/tmp/'}\n  condition: 1 of them"),
        rule("or-regex", "  a: {CommandLine|contains: evil}\n  b: {User|re: '^ro'}\n  condition: a or b"),
        rule("and-not", "  a: {Image|endswith: /curl}\n  f: {CommandLine|contains: health}\n  condition: a and not f"),
        rule("neq", "  a: {Image|neq: /usr/bin/ls}\n  condition: a"),
        rule("is-null", "  a: {CommandLine: null}\n  condition: a"),
        rule("exists-false", "  a: {CurrentDirectory|exists: false}\n  condition: a"),
        rule("keywords", "  kw: [needle, Other]\n  condition: kw"),
        rule("all-of-nothing", "  a: {Image|endswith: /x}\n  condition: a or all of nothing*"),
        rule("numeric", "  a: {ProcessId|gt: 10}\n  condition: a"),
    ]
    .concat();
    let mut p = Pair::new(compile(&yaml));
    let stats = p.compiled.stats();
    // Gated: and-not (its positive side), and the two whose branch without a
    // plain literal is a regex with a literal prefix (`/tmp/`, `ro`).
    assert_eq!(stats.always, 7, "{stats:?}");
    for ev in [
        json!({"Image": "/usr/bin/ls", "CommandLine": "ls -la", "User": "root", "ProcessId": 5}),
        json!({"Image": "/tmp/x", "CommandLine": "x", "CurrentDirectory": "/"}),
        json!({"Image": "/usr/bin/curl", "CommandLine": "curl https://x/health", "ProcessId": 50}),
        json!({"Image": "/usr/bin/curl", "CommandLine": "curl http://evil", "User": "Needle"}),
        json!({"Image": "/bin/x", "Other": "a NEEDLE"}),
    ] {
        p.check(&ev);
    }
    let hit = p.check(&json!({"Image": "/usr/bin/ls", "CommandLine": "ls"}));
    assert!(hit.contains(&"not".to_string()) && hit.contains(&"exists-false".to_string()), "{hit:?}");
}

#[test]
fn empty_needles_do_not_gate() {
    let yaml = [
        rule("empty-contains", "  a: {CommandLine|contains: ''}\n  condition: a"),
        rule("empty-or", "  a: {CommandLine|contains: ['', abc]}\n  condition: a"),
        rule("empty-start", "  a: {Image|startswith: ''}\n  b: {CommandLine|endswith: zz}\n  condition: a and b"),
        rule("empty-eq", "  a: {User: ''}\n  condition: a"),
    ]
    .concat();
    let mut p = Pair::new(compile(&yaml));
    for ev in [json!({"CommandLine": "x", "Image": "/a", "User": ""}), json!({"CommandLine": "abzz"}), json!({"Image": "q", "CommandLine": "zz"}), json!({})] {
        p.check(&ev);
    }
    assert!(p.matched >= 3);
}

#[test]
fn anchors_all_windash_and_cased() {
    let yaml = [
        rule("start", "  a: {Image|startswith: /usr/}\n  condition: a"),
        rule("end", "  a: {Image|endswith: /bash}\n  condition: a"),
        rule("eq", "  a: {Image: /bin/sh}\n  condition: a"),
        rule("all", "  a: {CommandLine|contains|all: [' -e ', /bin/sh]}\n  condition: a"),
        rule("windash", "  a: {CommandLine|windash|contains: ' -exec '}\n  condition: a"),
        rule("cased", "  a: {CommandLine|cased|contains: 'ÉVIL'}\n  condition: a"),
        rule("cased-ascii", "  a: {CommandLine|cased|endswith: 'Run'}\n  condition: a"),
        rule("b64", "  a: {CommandLine|base64offset|contains: 'curl'}\n  condition: a"),
        rule("number-text", "  a: {ProcessId|endswith: '42'}\n  condition: a"),
    ]
    .concat();
    let mut p = Pair::new(compile(&yaml));
    assert_eq!(p.compiled.stats().always, 0, "{:?}", p.compiled.stats());
    let cases = [
        ("/usr/bin/x", "x", 1),
        ("/opt/usr/x", "x", 0),
        ("/BIN/BASH", "X", 1),
        ("/bin/bash/x", "x", 0),
        ("/bin/SH", "nc -E /BIN/SH", 2),
        ("x", "nc -e /bin/bash", 0),
        ("x", "find . /exec x", 1),
        ("x", "find . -exec x", 1),
        ("x", "ÉVIL", 1),
        ("x", "évil", 0),
        ("x", "ÉVil", 0),
        ("x", "do Run", 1),
        ("x", "do run", 0),
    ];
    for (image, cmd, n) in cases {
        assert_eq!(p.check(&json!({"Image": image, "CommandLine": cmd})).len(), n, "{image} {cmd}");
    }
    // base64offset: whatever the engine makes of it, the compiled rules agree.
    for cmd in ["run Y3VybCAt", "Y3VybC", "y3vybc", "jdXJs", "N1cm"] {
        p.check(&json!({"CommandLine": cmd}));
    }
    assert_eq!(p.check(&json!({"ProcessId": 1042})).len(), 1);
    assert_eq!(p.check(&json!({"ProcessId": 1043})).len(), 0);
    assert_eq!(p.check(&json!({"ProcessId": [7, 142]})).len(), 1);
}

#[test]
fn unicode_case_folding_matches_the_engine() {
    // Lowercasing changes the byte length or maps non-ASCII to ASCII: the
    // Kelvin sign lowercases to `k`, `İ` to `i̇`, final sigma depends on its
    // position.
    let yaml = [
        rule("k", "  a: {CommandLine|contains: 'kill'}\n  condition: a"),
        rule("k-start", "  a: {CommandLine|startswith: 'kill'}\n  condition: a"),
        rule("dot-i", "  a: {CommandLine|endswith: 'i̇x'}\n  condition: a"),
        rule("sigma", "  a: {CommandLine|contains: 'σς'}\n  condition: a"),
        rule("umlaut", "  a: {Image|endswith: '/ärger'}\n  condition: a"),
        rule("eq-unicode", "  a: {User: 'ÖSTEN'}\n  condition: a"),
    ]
    .concat();
    let mut p = Pair::new(compile(&yaml));
    for cmd in ["\u{212A}ILL -9", "x \u{212A}ill", "İX", "aİx", "ΣΣ", "xΣΣ y", "σς", "Kill", "ki\u{212A}l"] {
        p.check(&json!({"CommandLine": cmd}));
    }
    for (image, user) in [("/ÄRGER", "östen"), ("/x/ärgeR", "Östen"), ("ärger", "ÖSTEN"), ("/Ärger", "OSTEN")] {
        p.check(&json!({"Image": image, "User": user}));
    }
    assert!(p.matched >= 8, "{} matched", p.matched);
}

#[test]
fn regex_rules_are_gated_by_their_literals_or_evaluated() {
    let yaml = [
        rule("re", "  a: {CommandLine|re: '(?i)nc\\s+-e'}\n  condition: a"),
        rule("re-k", "  a: {CommandLine|re: '(?i)kill\\s'}\n  condition: a"),
        rule("re-and-lit", "  a: {CommandLine|re: 'x+y'}\n  b: {Image|endswith: /sh}\n  condition: a and b"),
        rule("re-only", "  a: {CommandLine|re: '^\\w+\\s\\d+$'}\n  condition: a"),
        rule("re-empty", "  a: {User|re: 'x*'}\n  condition: a"),
        rule("re-utf8", "  a: {User|re: '(?i)é+t'}\n  condition: a"),
    ]
    .concat();
    let mut p = Pair::new(compile(&yaml));
    assert_eq!(p.compiled.stats().always, 2, "{:?}", p.compiled.stats());
    for (image, cmd, user) in [
        ("/bin/sh", "xxy", "x"),
        ("/bin/bash", "xxy", ""),
        ("/x", "NC   -e /bin/sh", "ÉÉT"),
        ("/x", "nc", "éT"),
        ("/x", "abc 123", "t"),
        ("/x", "\u{212A}ILL 1", "k"),
        ("/x", "KILL\t", "É"),
    ] {
        p.check(&json!({"Image": image, "CommandLine": cmd, "User": user}));
    }
    assert!(p.matched >= 6, "{}", p.matched);
}

#[test]
fn huge_numbers_of_needles() {
    let mut values = String::new();
    for i in 0..5_000 {
        values.push_str(&format!("      - 'tool-{i:05}-x'\n"));
    }
    let yaml = [
        format!("---\ntitle: many\n{HEAD}detection:\n  a:\n    CommandLine|contains:\n{values}  condition: a\n"),
        format!("---\ntitle: many-ends\n{HEAD}detection:\n  a:\n    Image|endswith:\n{values}  condition: a\n"),
    ]
    .concat();
    let mut p = Pair::new(compile(&yaml));
    let stats = p.compiled.stats();
    assert_eq!((stats.always, stats.needles), (0, 10_000), "{stats:?}");
    for i in [0, 1, 2_999, 4_999, 5_000] {
        let hit = p.check(&json!({"CommandLine": format!("run TOOL-{i:05}-X now"), "Image": format!("/bin/tool-{i:05}-x")}));
        assert_eq!(hit.len(), if i < 5_000 { 2 } else { 0 }, "{i}");
    }
}

/// The literals of a rule's matchers, by field.
fn literals(rule: &CompiledRule) -> Vec<(String, String)> {
    fn matcher(m: &CompiledMatcher, field: &str, out: &mut Vec<(String, String)>) {
        match m {
            CompiledMatcher::Exact { value, .. }
            | CompiledMatcher::Contains { value, .. }
            | CompiledMatcher::StartsWith { value, .. }
            | CompiledMatcher::EndsWith { value, .. } => out.push((field.to_string(), value.clone())),
            CompiledMatcher::AhoCorasickSet { needles, .. } => out.extend(needles.iter().map(|n| (field.to_string(), n.clone()))),
            CompiledMatcher::AnyOf(ms) | CompiledMatcher::AllOf(ms) | CompiledMatcher::CaseInsensitiveGroup { children: ms, .. } => {
                ms.iter().for_each(|m| matcher(m, field, out))
            }
            CompiledMatcher::Not(m) => matcher(m, field, out),
            _ => {}
        }
    }
    fn detection(d: &CompiledDetection, out: &mut Vec<(String, String)>) {
        match d {
            CompiledDetection::AllOf(items) => {
                for i in items {
                    if let Some(f) = &i.field {
                        matcher(&i.matcher, f, out);
                    }
                }
            }
            CompiledDetection::AnyOf(ds) | CompiledDetection::And(ds) => ds.iter().for_each(|d| detection(d, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut names: Vec<&String> = rule.detections.keys().collect();
    names.sort();
    for n in names {
        detection(&rule.detections[n], &mut out);
    }
    out
}

/// Deterministic xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A variant of a literal: case changed, maybe wrapped in text.
fn variant(rng: &mut Rng, lit: &str) -> String {
    let cased: String = match rng.below(4) {
        0 => lit.to_string(),
        1 => lit.to_uppercase(),
        2 => lit.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_uppercase().collect::<String>() } else { c.to_string() }).collect(),
        _ => lit.chars().take(lit.chars().count().saturating_sub(1)).collect(),
    };
    const AROUND: &[&str] = &["", "", " ", "/usr/bin/", "x", "É", "-- ", " \u{212A}"];
    format!("{}{cased}{}", AROUND[rng.below(AROUND.len())], AROUND[rng.below(AROUND.len())])
}

/// Events built from the rules' own literals (several per field, joined,
/// with case changes and text around), compared over every rule.
fn generated_events_agree(rules: Vec<CompiledRule>, per_rule: usize, seed: u64) -> Pair {
    let lits: Vec<Vec<(String, String)>> = rules.iter().map(literals).collect();
    let all: Vec<(String, String)> = lits.iter().flatten().cloned().collect();
    let mut p = Pair::new(rules);
    let mut rng = Rng(seed);
    if all.is_empty() {
        return p;
    }
    for own in &lits {
        for _ in 0..per_rule {
            let mut ev = Map::new();
            let extra: Vec<&(String, String)> = (0..2).map(|_| &all[rng.below(all.len())]).collect();
            for (field, lit) in own.iter().chain(extra) {
                if rng.below(4) == 0 {
                    continue;
                }
                let v = variant(&mut rng, lit);
                let joined = match ev.get(field).and_then(Value::as_str) {
                    Some(prev) if rng.below(2) == 0 => format!("{prev} {v}"),
                    _ => v,
                };
                ev.insert(field.clone(), Value::String(joined));
            }
            p.check(&Value::Object(ev));
        }
    }
    p
}

#[test]
fn property_generated_events_on_hand_written_rules() {
    let yaml = [
        rule("r1", "  a: {Image|endswith: [/bash, /sh]}\n  b: {CommandLine|contains|all: [' -c ', 'curl']}\n  condition: a and b"),
        rule("r2", "  a: {Image|endswith: /nc}\n  b: {CommandLine|contains: [' -e ', ' -c ']}\n  f: {User: root}\n  condition: a and b and not f"),
        rule("r3", "  a: {CommandLine|startswith: 'sudo '}\n  b: {CommandLine|endswith: ' -s'}\n  condition: 1 of them"),
        rule("r4", "  a: {ParentImage|endswith: /nginx}\n  b: {Image|endswith: [/bash, /dash, /sh]}\n  condition: all of them"),
        rule("r5", "  a: {CommandLine|windash|contains: [' -k ', ' -exec ']}\n  condition: a"),
        rule("r6", "  a: {Image: [/usr/bin/Wget, /usr/bin/curl]}\n  b: {CommandLine|cased|contains: 'X-Header'}\n  condition: a or b"),
    ]
    .concat();
    let p = generated_events_agree(compile(&yaml), 300, 0x1234_5678_9abc_def1);
    assert!(p.matched > 100, "{} of {} events matched", p.matched, p.events);
}

#[test]
fn property_generated_events_on_every_sigmahq_rule() {
    let Some(dir) = edr_testkit::sigmahq_linux_rules() else { return };
    let mut rules = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yml") {
                rules.extend(loadable(&p));
            }
        }
    }
    assert!(rules.len() > 150, "{} rules", rules.len());
    let n = rules.len();
    let p = generated_events_agree(rules, 12, 0x5eed);
    let stats = p.compiled.stats();
    eprintln!("{n} SigmaHQ rules: {stats:?}; {} generated events, {} matched at least one rule, compiled == interpreted on all", p.events, p.matched);
    assert!(p.matched * 10 > p.events, "too few events matched ({} of {})", p.matched, p.events);
}

/// The rules of a corpus file that compile (any logsource: this is about
/// the matcher, not the plugin's categories).
fn loadable(path: &Path) -> Vec<CompiledRule> {
    let text = std::fs::read_to_string(path).unwrap();
    let Ok(c) = parse_sigma_yaml(&text) else { return Vec::new() };
    c.rules.iter().filter_map(|r| compile_rule(r).ok()).collect()
}
