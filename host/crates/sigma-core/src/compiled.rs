//! Sigma rules compiled into one literal prefilter per field: an event is
//! scanned once per field, and only the rules whose required literals occur
//! (and the rules no literal can gate) are evaluated, by the `rsigma` engine's
//! own [`evaluate_rule`], so a finding is exactly what the interpreted
//! [`rsigma_eval::Engine`] gives.
//!
//! # What gates a rule
//!
//! At load, each rule's condition tree is turned into a conjunction of
//! *clauses*, each a set of literals `(field, needle, anchor)`: whenever the
//! rule matches, every clause has at least one literal that occurs in its
//! field (anchored at the start for `startswith`, at the end for `endswith`,
//! the whole value for an equality). The derivation only ever weakens:
//!
//! * a `contains`/`startswith`/`endswith`/equality matcher with a non-empty
//!   value gives one literal; `|all` (an AND of values) gives one clause per
//!   value; a list of values (an OR) gives one clause with all of them;
//!   `|windash` and `|base64offset` variants are already alternatives in the
//!   compiled matcher, so they become literals of the same clause;
//! * `and` concatenates clauses (keeping the most selective few: dropping a
//!   clause is always sound); `or` (and `1 of`) distributes, keeping a clause
//!   only when every branch contributes to it, so a branch without literals
//!   removes every clause;
//! * a regular expression gives one clause with the literals one of which
//!   starts every match, when there are few enough (see [`regex_literals`]);
//! * `not`, other regular expressions, numeric and CIDR comparisons, `exists`,
//!   `null`, field references, keywords (no field), array matches, an empty
//!   needle, and `all of` / `0 of` over nothing give no clause at all.
//!
//! A rule left without a clause is evaluated on every event of its category.
//!
//! # Case
//!
//! Case-insensitive values are stored lowercased (Unicode `to_lowercase`) by
//! the compiler, and the engine compares them with the lowercased event
//! value. The automaton is ASCII case-insensitive and sees the event value
//! as is; when the value is not ASCII it also sees the value lowercased the
//! engine's way, so a case-insensitive literal is found whenever the engine
//! would match it (a `|cased` literal is found in the value as is). A
//! non-ASCII value whose lowercase form changes length only moves anchors
//! within the lowercased text, which is where case-insensitive anchors are
//! checked.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use rsigma_eval::matcher::{ascii_lowercase_cow, GroupMode};
use rsigma_eval::{evaluate_rule, CompiledDetection, CompiledDetectionItem, CompiledMatcher, CompiledRule, EvaluationResult, Event, EventValue};
use rsigma_parser::{ConditionExpr, Quantifier};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Clauses kept per rule (the most selective ones).
const MAX_CLAUSES: usize = 4;
/// A clause with more literals than this is dropped (it gates almost nothing
/// and would bloat the automaton); the rule may then be evaluated more often.
const MAX_CLAUSE_LITERALS: usize = 1 << 16;
/// Total needle bytes of a field up to which its automaton is a full DFA.
const MAX_DFA_NEEDLE_BYTES: usize = 16 * 1024;

/// Where a literal must occur in the field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Anchor {
    /// Anywhere (`contains`).
    Anywhere,
    /// At the start (`startswith`).
    Start,
    /// At the end (`endswith`).
    End,
    /// The whole value (equality).
    Whole,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Literal {
    field: String,
    needle: String,
    anchor: Anchor,
}

/// Literals of which at least one occurs whenever the rule matches (sorted).
type Clause = Vec<Literal>;
/// All of these clauses hold whenever the rule matches; empty: no constraint.
type Cnf = Vec<Clause>;

/// How selective a clause is: its shortest needle (anchors count for a
/// little), then fewer literals.
fn score(c: &Clause) -> (usize, std::cmp::Reverse<usize>) {
    let shortest = c
        .iter()
        .map(|l| {
            l.needle.len()
                + match l.anchor {
                    Anchor::Anywhere => 0,
                    Anchor::Start | Anchor::End => 2,
                    Anchor::Whole => 4,
                }
        })
        .min()
        .unwrap_or(0);
    (shortest, std::cmp::Reverse(c.len()))
}

fn literal(field: &str, needle: &str, anchor: Anchor) -> Cnf {
    if needle.is_empty() {
        // Every value contains (starts and ends with) the empty string; an
        // empty equality is not worth a literal either.
        return Vec::new();
    }
    vec![vec![Literal { field: field.to_string(), needle: needle.to_string(), anchor }]]
}

fn and_all(parts: impl IntoIterator<Item = Cnf>) -> Cnf {
    let mut clauses: Cnf = parts.into_iter().flatten().collect();
    clauses.sort();
    clauses.dedup();
    clauses.sort_by_key(|c| std::cmp::Reverse(score(c)));
    clauses.truncate(MAX_CLAUSES);
    clauses
}

fn best(mut cnf: Cnf) -> Cnf {
    cnf.sort_by_key(|c| std::cmp::Reverse(score(c)));
    cnf.truncate(1);
    cnf
}

fn or2(a: Cnf, b: Cnf) -> Cnf {
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let (a, b) = if a.len() * b.len() > MAX_CLAUSES { (best(a), best(b)) } else { (a, b) };
    let mut out = Vec::new();
    for ca in &a {
        for cb in &b {
            let mut c: Clause = ca.iter().chain(cb.iter()).cloned().collect();
            c.sort();
            c.dedup();
            if c.len() <= MAX_CLAUSE_LITERALS {
                out.push(c);
            }
        }
    }
    and_all([out])
}

/// OR of the parts; no part at all gives no constraint.
fn or_all(parts: impl IntoIterator<Item = Cnf>) -> Cnf {
    let mut acc: Option<Cnf> = None;
    for p in parts {
        let next = match acc {
            None => p,
            Some(a) => or2(a, p),
        };
        if next.is_empty() {
            return Vec::new();
        }
        acc = Some(next);
    }
    acc.unwrap_or_default()
}

fn analyze_matcher(m: &CompiledMatcher, field: &str) -> Cnf {
    match m {
        CompiledMatcher::Exact { value, .. } => literal(field, value, Anchor::Whole),
        CompiledMatcher::Contains { value, .. } => literal(field, value, Anchor::Anywhere),
        CompiledMatcher::StartsWith { value, .. } => literal(field, value, Anchor::Start),
        CompiledMatcher::EndsWith { value, .. } => literal(field, value, Anchor::End),
        CompiledMatcher::AhoCorasickSet { needles, .. } => or_all(needles.iter().map(|n| literal(field, n, Anchor::Anywhere))),
        CompiledMatcher::AnyOf(ms) => or_all(ms.iter().map(|m| analyze_matcher(m, field))),
        CompiledMatcher::AllOf(ms) => and_all(ms.iter().map(|m| analyze_matcher(m, field))),
        CompiledMatcher::CaseInsensitiveGroup { children, mode: GroupMode::Any } => or_all(children.iter().map(|m| analyze_matcher(m, field))),
        CompiledMatcher::CaseInsensitiveGroup { children, mode: GroupMode::All } => and_all(children.iter().map(|m| analyze_matcher(m, field))),
        CompiledMatcher::Regex(re) => regex_literals(field, re.as_str()),
        CompiledMatcher::RegexSetMatch { set, mode: GroupMode::Any } => or_all(set.patterns().iter().map(|p| regex_literals(field, p))),
        CompiledMatcher::RegexSetMatch { set, mode: GroupMode::All } => and_all(set.patterns().iter().map(|p| regex_literals(field, p))),
        // Numbers, CIDR, null, exists, booleans, field references,
        // placeholders, timestamps, and anything negated: no literal is
        // required.
        _ => Vec::new(),
    }
}

/// The literals one of which starts every match of a regular expression
/// (`regex-syntax`'s prefix extraction, the one the `regex` crate uses for
/// its own prefilters), as a clause of `contains` literals. Nothing when the
/// set is unbounded (a large class, a leading `.*`) or may be empty. A
/// literal cut inside a UTF-8 sequence is shortened to its valid prefix,
/// which still starts every match.
fn regex_literals(field: &str, pattern: &str) -> Cnf {
    let Ok(hir) = regex_syntax::parse(pattern) else { return Vec::new() };
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let Some(lits) = seq.literals() else { return Vec::new() };
    if lits.is_empty() {
        return Vec::new();
    }
    let mut clause = Vec::new();
    for l in lits {
        let bytes = l.as_bytes();
        let valid = match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        if valid.is_empty() {
            return Vec::new();
        }
        clause.push(Literal { field: field.to_string(), needle: valid.to_string(), anchor: Anchor::Anywhere });
    }
    clause.sort();
    clause.dedup();
    vec![clause]
}

fn analyze_item(item: &CompiledDetectionItem) -> Cnf {
    match (&item.field, item.exists) {
        // A positive literal matcher is false on an absent field (only
        // `Null` matches one), so the field's literals gate the item.
        (Some(field), None) => analyze_matcher(&item.matcher, field),
        // Keywords (no field) look at every value; `exists` needs no literal.
        _ => Vec::new(),
    }
}

fn analyze_detection(d: &CompiledDetection) -> Cnf {
    match d {
        CompiledDetection::AllOf(items) => and_all(items.iter().map(analyze_item)),
        CompiledDetection::AnyOf(ds) => or_all(ds.iter().map(analyze_detection)),
        CompiledDetection::And(ds) => and_all(ds.iter().map(analyze_detection)),
        CompiledDetection::Keywords(_) | CompiledDetection::ArrayMatch { .. } | CompiledDetection::Conditional { .. } => Vec::new(),
    }
}

fn analyze_condition(c: &ConditionExpr, detections: &HashMap<String, CompiledDetection>) -> Cnf {
    match c {
        ConditionExpr::Identifier(name) => detections.get(name).map(analyze_detection).unwrap_or_default(),
        ConditionExpr::And(parts) => and_all(parts.iter().map(|p| analyze_condition(p, detections))),
        ConditionExpr::Or(parts) => or_all(parts.iter().map(|p| analyze_condition(p, detections))),
        ConditionExpr::Not(_) => Vec::new(),
        ConditionExpr::Selector { quantifier, pattern } => {
            // The same selection of detections as the evaluator's.
            let selected: Vec<&CompiledDetection> = detections.iter().filter(|(n, _)| pattern.matches_detection_name(n)).map(|(_, d)| d).collect();
            match quantifier {
                // `all of` nothing is vacuously true; `0 of` always is.
                Quantifier::All if selected.is_empty() => Vec::new(),
                Quantifier::Count(0) => Vec::new(),
                Quantifier::All => and_all(selected.into_iter().map(analyze_detection)),
                Quantifier::Any | Quantifier::Count(_) => or_all(selected.into_iter().map(analyze_detection)),
            }
        }
    }
}

/// The clauses gating a rule (empty: evaluate it on every event).
fn analyze_rule(rule: &CompiledRule) -> Cnf {
    if rule.conditions.is_empty() {
        return Vec::new();
    }
    or_all(rule.conditions.iter().map(|c| analyze_condition(c, &rule.detections)))
}

/// One field's automaton over every needle of the rules' clauses.
struct FieldScan {
    field: String,
    automaton: AhoCorasick,
    /// Per automaton pattern: the (anchor, clause) pairs it can satisfy.
    targets: Vec<Vec<(Anchor, u32)>>,
}

/// Builds the automaton for one field's needles.
///
/// `aho-corasick` is the multi-pattern matcher because it is pure Rust with
/// no platform code required: on wasm32 (no SIMD enabled) it runs its
/// scalar DFA/NFA, the same code natively minus the SIMD prefilters; it
/// supports ASCII case-insensitive matching and overlapping iteration (every
/// occurrence of every needle, needed to check anchors); and the engine
/// already links it, so the component gains no new dependency.
///
/// A full DFA (the fastest scan) is built only for small needle sets: its
/// size grows with the total needle length, and the plugin's memory is
/// bounded; larger sets get the library's choice (a contiguous NFA).
fn build_automaton(needles: &[&str]) -> Option<AhoCorasick> {
    let build = |kind| AhoCorasick::builder().ascii_case_insensitive(true).match_kind(MatchKind::Standard).kind(kind).build(needles);
    let total: usize = needles.iter().map(|n| n.len()).sum();
    if total <= MAX_DFA_NEEDLE_BYTES {
        if let Ok(ac) = build(Some(AhoCorasickKind::DFA)) {
            return Some(ac);
        }
    }
    build(None).ok()
}

/// Per-event working state, reused so that evaluating does not allocate.
#[derive(Default)]
struct Scratch {
    clause_hit: Vec<u64>,
    rule_hits: Vec<u16>,
    touched: Vec<u32>,
    candidates: Vec<u32>,
    merged: Vec<u32>,
}

impl Scratch {
    fn mark(&mut self, clause: u32, clause_rule: &[u32], rule_need: &[u16]) {
        let (word, bit) = ((clause / 64) as usize, 1u64 << (clause % 64));
        if self.clause_hit[word] & bit != 0 {
            return;
        }
        self.clause_hit[word] |= bit;
        let rule = clause_rule[clause as usize];
        let hits = &mut self.rule_hits[rule as usize];
        if *hits == 0 {
            self.touched.push(rule);
        }
        *hits += 1;
        if *hits == rule_need[rule as usize] {
            self.candidates.push(rule);
        }
    }

    fn reset(&mut self) {
        self.clause_hit.iter_mut().for_each(|w| *w = 0);
        for &r in &self.touched {
            self.rule_hits[r as usize] = 0;
        }
        self.touched.clear();
        self.candidates.clear();
        self.merged.clear();
    }
}

/// What the prefilter made of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefilterStats {
    /// Rules.
    pub rules: usize,
    /// Rules evaluated on every event (no literal gates them).
    pub always: usize,
    /// Fields scanned per event.
    pub fields: usize,
    /// Distinct needles over all fields.
    pub needles: usize,
    /// Clauses over all gated rules.
    pub clauses: usize,
}

/// Rules of one category, compiled: a literal prefilter per field in front
/// of the engine's evaluation of each surviving rule.
pub struct CompiledRules {
    rules: Vec<CompiledRule>,
    /// Rules without a clause, ascending.
    always: Vec<u32>,
    fields: Vec<FieldScan>,
    clause_rule: Vec<u32>,
    rule_need: Vec<u16>,
    needles: usize,
    scratch: Scratch,
    text: String,
}

impl CompiledRules {
    /// Compiles the prefilter for these rules (evaluated in this order).
    pub fn new(rules: Vec<CompiledRule>) -> Self {
        let mut cnfs: Vec<Cnf> = rules.iter().map(analyze_rule).collect();

        // Needles per field, deduplicated (ASCII case-insensitively, as the
        // automaton matches), in a stable order.
        let mut by_field: BTreeMap<String, BTreeMap<String, ()>> = BTreeMap::new();
        for lit in cnfs.iter().flatten().flatten() {
            by_field.entry(lit.field.clone()).or_default().insert(lit.needle.to_ascii_lowercase(), ());
        }
        let (mut fields, mut needle_ids, mut needles) = (Vec::new(), Vec::new(), 0);
        for (field, set) in by_field {
            let list: Vec<&str> = set.keys().map(String::as_str).collect();
            if let Some(automaton) = build_automaton(&list) {
                needles += list.len();
                fields.push(FieldScan { field, automaton, targets: vec![Vec::new(); list.len()] });
                needle_ids.push(set.keys().enumerate().map(|(i, n)| (n.clone(), i)).collect::<HashMap<String, usize>>());
            }
        }
        let index_of: HashMap<String, usize> = fields.iter().enumerate().map(|(i, f)| (f.field.clone(), i)).collect();
        // A clause with a literal in a field whose automaton did not build
        // cannot be checked: drop it (the rule may become ungated).
        for cnf in &mut cnfs {
            cnf.retain(|c| c.iter().all(|l| index_of.contains_key(&l.field)));
        }
        let (mut always, mut clause_rule, mut rule_need) = (Vec::new(), Vec::new(), Vec::new());
        for (r, cnf) in cnfs.iter().enumerate() {
            rule_need.push(cnf.len() as u16);
            if cnf.is_empty() {
                always.push(r as u32);
            }
            for clause in cnf {
                let id = clause_rule.len() as u32;
                clause_rule.push(r as u32);
                for lit in clause {
                    let fi = index_of[&lit.field];
                    let pid = needle_ids[fi][&lit.needle.to_ascii_lowercase()];
                    let t = &mut fields[fi].targets[pid];
                    if !t.contains(&(lit.anchor, id)) {
                        t.push((lit.anchor, id));
                    }
                }
            }
        }
        let scratch = Scratch { clause_hit: vec![0; clause_rule.len().div_ceil(64)], rule_hits: vec![0; rules.len()], ..Scratch::default() };
        CompiledRules { rules, always, fields, clause_rule, rule_need, needles, scratch, text: String::new() }
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// What the prefilter made of the rules.
    pub fn stats(&self) -> PrefilterStats {
        PrefilterStats { rules: self.rules.len(), always: self.always.len(), fields: self.fields.len(), needles: self.needles, clauses: self.clause_rule.len() }
    }

    /// Indices of the rules whose clauses all hit on `event` plus the ungated
    /// rules, ascending: the rules worth evaluating.
    pub fn candidates<E: Event>(&mut self, event: &E) -> Vec<usize> {
        self.prefilter(event);
        let out = self.scratch.merged.iter().map(|&r| r as usize).collect();
        self.scratch.reset();
        out
    }

    /// Evaluates `event`: appends a result for every matching rule, in rule
    /// order, exactly as [`rsigma_eval::Engine::evaluate`] would.
    pub fn evaluate<E: Event>(&mut self, event: &E, out: &mut Vec<EvaluationResult>) {
        self.prefilter(event);
        for &r in &self.scratch.merged {
            if let Some(m) = evaluate_rule(&self.rules[r as usize], event) {
                out.push(m);
            }
        }
        self.scratch.reset();
    }

    /// Fills `scratch.merged` with the candidates, ascending.
    fn prefilter<E: Event>(&mut self, event: &E) {
        let CompiledRules { fields, clause_rule, rule_need, scratch, text, always, .. } = self;
        for f in fields.iter() {
            if let Some(v) = event.get_field(&f.field) {
                scan_value(f, &v, text, &mut |c| scratch.mark(c, clause_rule, rule_need));
            }
        }
        scratch.candidates.sort_unstable();
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&always[..], &scratch.candidates[..]);
        while i < a.len() || j < b.len() {
            if j >= b.len() || (i < a.len() && a[i] < b[j]) {
                scratch.merged.push(a[i]);
                i += 1;
            } else {
                scratch.merged.push(b[j]);
                j += 1;
            }
        }
    }
}

/// Scans every string form the engine would compare for a value: strings as
/// they are, numbers and booleans as text, array members one by one.
fn scan_value(f: &FieldScan, v: &EventValue<'_>, text: &mut String, mark: &mut dyn FnMut(u32)) {
    match v {
        EventValue::Str(s) => scan_str(f, s, mark),
        EventValue::Int(n) => {
            text.clear();
            let _ = write!(text, "{n}");
            scan_str(f, text, mark);
        }
        EventValue::Float(x) => {
            text.clear();
            let _ = write!(text, "{x}");
            scan_str(f, text, mark);
        }
        EventValue::Bool(b) => scan_str(f, if *b { "true" } else { "false" }, mark),
        EventValue::Array(items) => items.iter().for_each(|i| scan_value(f, i, text, mark)),
        EventValue::Null | EventValue::Map(_) => {}
    }
}

fn scan_str(f: &FieldScan, s: &str, mark: &mut dyn FnMut(u32)) {
    scan_haystack(f, s, mark);
    if !s.is_ascii() {
        let lowered = ascii_lowercase_cow(s);
        if lowered.as_ref() != s {
            scan_haystack(f, &lowered, mark);
        }
    }
}

fn scan_haystack(f: &FieldScan, hay: &str, mark: &mut dyn FnMut(u32)) {
    for m in f.automaton.find_overlapping_iter(hay) {
        for &(anchor, clause) in &f.targets[m.pattern().as_usize()] {
            let ok = match anchor {
                Anchor::Anywhere => true,
                Anchor::Start => m.start() == 0,
                Anchor::End => m.end() == hay.len(),
                Anchor::Whole => m.start() == 0 && m.end() == hay.len(),
            };
            if ok {
                mark(clause);
            }
        }
    }
}
