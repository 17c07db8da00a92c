//! Loading Sigma rules: parsing, the logsource and modifier checks, compiling
//! into one engine per category, and what each rule looked like when it did
//! not load. Shared by the `sigma` plugin's `init` and by [`crate::check_dir`].

use crate::category::{Category, ABSENT_FIELDS};
use crate::compiled::CompiledRules;
use rsigma_eval::{compile_rule, CompiledRule, Engine, EvalError, EvaluationResult, Event};
use rsigma_parser::{parse_sigma_yaml, Detection, Level, LogSource, Modifier, SigmaParserError, SigmaRule};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Custom attribute carrying a compiled rule's index into [`RuleSet::rules`].
pub const INDEX_ATTRIBUTE: &str = "edr.sigma.rule_index";

/// Why a rule, or a document of a rule file, was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadError {
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// The file could not be read (check only).
    #[error("cannot read the file: {message}")]
    Unreadable {
        /// The I/O error.
        message: String,
    },
    /// The YAML or the rule structure is invalid.
    #[error("parse error{}: {message}", position(*line, *column))]
    Parse {
        /// What the parser said.
        message: String,
        /// 1-based line, where the parser gives one.
        line: Option<u32>,
        /// 1-based column, where the parser gives one.
        column: Option<u32>,
    },
    /// The rule's logsource is not one this plugin has events for.
    #[error("unsupported logsource {logsource}: this plugin serves product linux with category {}", SERVED)]
    UnsupportedLogsource {
        /// The rule's logsource, e.g. `linux/service:auditd`.
        logsource: String,
    },
    /// The rule uses a modifier that the engine or this plugin cannot honour.
    #[error("unsupported modifier `{modifier}`: {reason}")]
    UnsupportedModifier {
        /// The modifier as written.
        modifier: String,
        /// Why it is not supported.
        reason: String,
    },
    /// A correlation or filter (meta) rule: only detection rules are supported.
    #[error("unsupported rule type: {rule_type} rules are not supported, only detection rules")]
    UnsupportedRuleType {
        /// `correlation` or `filter`.
        rule_type: String,
    },
    /// The detection does not compile (bad regex, CIDR, condition reference, ...).
    #[error("does not compile: {message}")]
    Compile {
        /// The compiler's message.
        message: String,
    },
    /// Another loaded rule already has this id.
    #[error("duplicate rule id `{id}` (already loaded from {first_file})")]
    DuplicateId {
        /// The id (or the title of a rule without one).
        id: String,
        /// The file of the rule that was loaded.
        first_file: String,
    },
    /// The `categories` setting excludes the rule's category.
    #[error("category {category} is not enabled by the `categories` setting")]
    CategoryDisabled {
        /// The rule's category.
        category: String,
    },
}

const SERVED: &str = "process_creation, file_event, file_delete, file_access or network_connection";

fn position(line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

impl LoadError {
    /// A short stable name for the kind of problem (`parse_error`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::NotUtf8 => "not_utf8",
            LoadError::Unreadable { .. } => "unreadable",
            LoadError::Parse { .. } => "parse_error",
            LoadError::UnsupportedLogsource { .. } => "unsupported_logsource",
            LoadError::UnsupportedModifier { .. } => "unsupported_modifier",
            LoadError::UnsupportedRuleType { .. } => "unsupported_rule_type",
            LoadError::Compile { .. } => "compile_error",
            LoadError::DuplicateId { .. } => "duplicate_id",
            LoadError::CategoryDisabled { .. } => "category_disabled",
        }
    }

    /// A parse error from one of the parser's messages, with the position
    /// it mentions (`line N column M` from YAML, `at L:C` from conditions).
    fn from_parser_message(message: &str) -> LoadError {
        if let Some(rest) = message.strip_prefix("Unknown modifier '") {
            let modifier = rest.trim_end_matches('\'').to_string();
            return LoadError::UnsupportedModifier { modifier, reason: "not a Sigma modifier".into() };
        }
        if let Some(m) = condition_message(message) {
            return LoadError::Parse { message: m, line: None, column: None };
        }
        let (line, column) = find_position(message);
        LoadError::Parse { message: one_line(message), line, column }
    }

    fn from_eval(e: &EvalError) -> LoadError {
        match e {
            EvalError::Parser(SigmaParserError::UnknownModifier(m)) => {
                LoadError::UnsupportedModifier { modifier: m.clone(), reason: "not a Sigma modifier".into() }
            }
            EvalError::InvalidModifiers(m) => LoadError::UnsupportedModifier { modifier: m.clone(), reason: "invalid modifier combination".into() },
            other => {
                let text = other.to_string();
                match condition_message(&text) {
                    Some(m) => LoadError::Parse { message: m, line: None, column: None },
                    None => LoadError::Compile { message: one_line(&text) },
                }
            }
        }
    }
}

/// True for the parser's messages about documents that still parsed.
fn is_parser_warning(message: &str) -> bool {
    message.starts_with("'related'") || message.starts_with("related[") || message.starts_with("invalid ")
}

/// A multi-line message (pest, regex) on one line: the first line and the
/// detail line (`= expected ...`, `error: ...`).
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() <= 1 {
        return message.trim().to_string();
    }
    let head = lines[0].split(" --> ").next().unwrap_or(lines[0]).trim_end();
    match lines.iter().rev().find_map(|l| l.strip_prefix("= ").or_else(|| l.strip_prefix("error: "))) {
        Some(detail) => format!("{head} {detail}"),
        None => lines.join(" "),
    }
}

/// A condition parse error, re-worded: its position is within the condition
/// string, not the file (`condition \`s and (\`: expected expr at column 8`).
fn condition_message(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Condition parse error")?;
    let detail = message.lines().rev().find_map(|l| l.trim().strip_prefix("= ")).unwrap_or("invalid syntax");
    let text = message.lines().find_map(|l| {
        let (num, code) = l.split_once(" | ")?;
        num.trim().parse::<u32>().ok().map(|_| code)
    });
    let column = rest.strip_prefix(" at ").and_then(|r| r.split(':').nth(1)).and_then(|c| c.trim().parse::<u32>().ok());
    let mut out = match text {
        Some(t) => format!("condition `{}`: {detail}", t.trim_end()),
        None => format!("condition: {detail}"),
    };
    if let Some(c) = column {
        out.push_str(&format!(" at column {c}"));
    }
    Some(out)
}

/// Finds `line N column M` or `at L:C` in a message.
fn find_position(message: &str) -> (Option<u32>, Option<u32>) {
    fn number_after<'a>(s: &'a str, word: &str) -> Option<(u32, &'a str)> {
        let at = s.find(word)? + word.len();
        let rest = s[at..].trim_start();
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        Some((rest[..end].parse().ok()?, &rest[end..]))
    }
    if let Some((line, rest)) = number_after(message, "line ") {
        let column = number_after(rest, "column ").map(|(c, _)| c);
        return (Some(line), column);
    }
    // "Condition parse error at 1:12: ..."
    if let Some(at) = message.find(" at ") {
        let rest = &message[at + 4..];
        if let Some((l, r)) = rest.split_once(':') {
            let c: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let (Ok(l), Ok(c)) = (l.parse(), c.parse()) {
                return (Some(l), Some(c));
            }
        }
    }
    (None, None)
}

/// A logsource as a short label: `linux/process_creation`,
/// `linux/service:auditd`, `linux/(no category)`, `windows/...`.
pub fn logsource_label(ls: &LogSource) -> String {
    let product = ls.product.as_deref().unwrap_or("(any product)");
    let what = match (&ls.category, &ls.service) {
        (Some(c), Some(s)) => format!("{c} (service:{s})"),
        (Some(c), None) => c.clone(),
        (None, Some(s)) => format!("service:{s}"),
        (None, None) => "(no category)".to_string(),
    };
    format!("{product}/{what}")
}

/// The served category of a logsource, or `None` when it is not served.
fn served_category(ls: &LogSource) -> Option<Category> {
    if !ls.product.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("linux")) || ls.service.is_some() {
        return None;
    }
    Category::parse(ls.category.as_deref()?)
}

/// The level of a rule that gives none.
pub const DEFAULT_LEVEL: Level = Level::Medium;

/// ATT&CK technique ids from Sigma tags: `attack.t1059.004` -> `T1059.004`.
/// Tactic (`attack.execution`), group (`attack.g0032`) and software
/// (`attack.s0002`) tags are ignored.
pub fn techniques(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let Some(t) = tag.get(..8).filter(|p| p.eq_ignore_ascii_case("attack.t")).map(|_| &tag[8..]) else { continue };
        let (base, sub) = match t.split_once('.') {
            Some((b, s)) => (b, Some(s)),
            None => (t, None),
        };
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(base, 4) || !sub.is_none_or(|s| digits(s, 3)) {
            continue;
        }
        let id = match sub {
            Some(s) => format!("T{base}.{s}"),
            None => format!("T{base}"),
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// What a finding of a loaded rule carries. `S` is how severity is told:
/// the rule's Sigma [`Level`] as loaded, or the plugin's own severity type
/// once mapped with [`RuleSet::map_severity`].
#[derive(Debug, Clone)]
pub struct RuleMeta<S = Level> {
    /// The rule's `id`, or its title when it has none.
    pub key: String,
    /// `title`.
    pub title: String,
    /// From `level` ([`DEFAULT_LEVEL`] when absent).
    pub severity: S,
    /// From `tags`.
    pub techniques: Vec<String>,
    /// `author` (`unknown` when absent).
    pub author: String,
    /// The first of `references`.
    pub reference: Option<String>,
    /// The logsource category.
    pub category: Category,
    /// The rule file it came from.
    pub file: String,
}

/// What happened to one rule (or one failed document) of a rule file.
#[derive(Debug, Clone)]
pub struct RuleOutcome {
    /// The rule file.
    pub file: String,
    /// `title`, when the document parsed that far.
    pub title: Option<String>,
    /// `id`, when present.
    pub id: Option<String>,
    /// The logsource label (see [`logsource_label`]), when parsed.
    pub logsource: Option<String>,
    /// The served category, when the logsource is served.
    pub category: Option<Category>,
    /// `None` when the rule loaded.
    pub error: Option<LoadError>,
    /// Things that do not stop the rule from loading but that its author
    /// should know, e.g. a field this plugin never sets.
    pub warnings: Vec<String>,
}

impl RuleOutcome {
    /// True when the rule loaded.
    pub fn loaded(&self) -> bool {
        self.error.is_none()
    }

    /// The rule's name for messages: title, else id, else the file.
    pub fn name(&self) -> &str {
        self.title.as_deref().or(self.id.as_deref()).unwrap_or(&self.file)
    }
}

/// How the rules of a category are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalMode {
    /// A literal prefilter per field, then the engine on the rules that pass
    /// ([`CompiledRules`]).
    #[default]
    Compiled,
    /// The `rsigma` engine as is ([`Engine::evaluate`]): kept as the
    /// reference the compiled path is checked and measured against.
    Interpreted,
}

impl EvalMode {
    /// From its name: `compiled` or `interpreted`.
    pub fn parse(s: &str) -> Option<EvalMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "compiled" => Some(EvalMode::Compiled),
            "interpreted" => Some(EvalMode::Interpreted),
            _ => None,
        }
    }
}

/// The rules of one category, ready to evaluate.
pub enum CategoryRules {
    /// See [`EvalMode::Compiled`].
    Compiled(Box<CompiledRules>),
    /// See [`EvalMode::Interpreted`].
    Interpreted(Box<Engine>),
}

impl CategoryRules {
    fn new(rules: Vec<CompiledRule>, mode: EvalMode) -> Self {
        match mode {
            EvalMode::Compiled => CategoryRules::Compiled(Box::new(CompiledRules::new(rules))),
            EvalMode::Interpreted => {
                let mut e = Engine::new();
                e.extend_compiled_rules(rules);
                CategoryRules::Interpreted(Box::new(e))
            }
        }
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        match self {
            CategoryRules::Compiled(c) => c.rule_count(),
            CategoryRules::Interpreted(e) => e.rule_count(),
        }
    }

    /// What the compiled prefilter made of the rules (`None` when interpreted).
    pub fn stats(&self) -> Option<crate::compiled::PrefilterStats> {
        match self {
            CategoryRules::Compiled(c) => Some(c.stats()),
            CategoryRules::Interpreted(_) => None,
        }
    }

    /// Appends a result for every rule that matches `event`, in rule order.
    pub fn evaluate<E: Event>(&mut self, event: &E, out: &mut Vec<EvaluationResult>) {
        match self {
            CategoryRules::Compiled(c) => c.evaluate(event, out),
            CategoryRules::Interpreted(e) => out.extend(e.evaluate(event)),
        }
    }
}

/// Loaded rules, one engine per served category.
pub struct RuleSet<S = Level> {
    engines: Vec<CategoryRules>,
    rules: Vec<RuleMeta<S>>,
}

impl RuleSet<Level> {
    /// The same rules with every severity mapped by `f` (e.g. to a finding's
    /// severity type).
    pub fn map_severity<T>(self, f: impl Fn(Level) -> T) -> RuleSet<T> {
        let rules = self
            .rules
            .into_iter()
            .map(|r| RuleMeta {
                key: r.key,
                title: r.title,
                severity: f(r.severity),
                techniques: r.techniques,
                author: r.author,
                reference: r.reference,
                category: r.category,
                file: r.file,
            })
            .collect();
        RuleSet { engines: self.engines, rules }
    }
}

impl<S> RuleSet<S> {
    /// The rules of a category (empty when no rule of it loaded).
    pub fn engine(&self, category: Category) -> &CategoryRules {
        &self.engines[category.index()]
    }

    /// Appends a result for every rule of `category` that matches `event`.
    pub fn evaluate<E: Event>(&mut self, category: Category, event: &E, out: &mut Vec<EvaluationResult>) {
        self.engines[category.index()].evaluate(event, out)
    }

    /// Every loaded rule.
    pub fn rules(&self) -> &[RuleMeta<S>] {
        &self.rules
    }

    /// A loaded rule by the index stored in its custom attribute.
    pub fn rule(&self, index: usize) -> Option<&RuleMeta<S>> {
        self.rules.get(index)
    }

    /// Number of loaded rules of a category.
    pub fn count(&self, category: Category) -> usize {
        self.engine(category).rule_count()
    }
}

/// Builds a [`RuleSet`] from rule files.
pub struct Loader {
    enabled: Option<Vec<Category>>,
    compiled: Vec<Vec<CompiledRule>>,
    rules: Vec<RuleMeta>,
    seen: HashMap<String, String>,
    outcomes: Vec<RuleOutcome>,
}

impl Loader {
    /// A loader; `enabled` limits the categories that load (`None`: all).
    pub fn new(enabled: Option<Vec<Category>>) -> Self {
        Loader { enabled, compiled: Category::ALL.iter().map(|_| Vec::new()).collect(), rules: Vec::new(), seen: HashMap::new(), outcomes: Vec::new() }
    }

    /// Records that a file could not be read at all.
    pub fn add_failed_file(&mut self, file: &str, error: LoadError) {
        self.outcomes.push(RuleOutcome {
            file: file.to_string(),
            title: None,
            id: None,
            logsource: None,
            category: None,
            error: Some(error),
            warnings: Vec::new(),
        });
    }

    /// Loads every rule of one rule file (possibly several YAML documents).
    pub fn add_file(&mut self, file: &str, bytes: &[u8]) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return self.add_failed_file(file, LoadError::NotUtf8);
        };
        let collection = match parse_sigma_yaml(text) {
            Ok(c) => c,
            Err(e) => return self.add_failed_file(file, LoadError::from_parser_message(&e.to_string())),
        };
        // `errors` mixes documents that failed with warnings about documents
        // that parsed (an invalid `level`, `status` or `related`): the latter
        // go to the file's rules as warnings.
        let (warnings, errors): (Vec<&String>, Vec<&String>) = collection.errors.iter().partition(|m| is_parser_warning(m));
        for message in errors {
            self.add_failed_file(file, LoadError::from_parser_message(message));
        }
        let file_warnings: Vec<String> = warnings.into_iter().map(|w| format!("{w} (ignored)")).collect();
        let first_outcome = self.outcomes.len();
        for c in &collection.correlations {
            self.outcomes.push(RuleOutcome {
                file: file.to_string(),
                title: Some(c.title.clone()),
                id: c.id.clone(),
                logsource: None,
                category: None,
                error: Some(LoadError::UnsupportedRuleType { rule_type: "correlation".into() }),
                warnings: Vec::new(),
            });
        }
        for f in &collection.filters {
            self.outcomes.push(RuleOutcome {
                file: file.to_string(),
                title: Some(f.title.clone()),
                id: f.id.clone(),
                logsource: None,
                category: None,
                error: Some(LoadError::UnsupportedRuleType { rule_type: "filter".into() }),
                warnings: Vec::new(),
            });
        }
        for rule in &collection.rules {
            let outcome = self.add_rule(file, rule);
            self.outcomes.push(outcome);
        }
        if !file_warnings.is_empty() {
            for o in self.outcomes[first_outcome..].iter_mut().filter(|o| o.title.is_some()) {
                o.warnings.extend(file_warnings.iter().cloned());
            }
        }
    }

    fn add_rule(&mut self, file: &str, rule: &SigmaRule) -> RuleOutcome {
        let mut outcome = RuleOutcome {
            file: file.to_string(),
            title: Some(rule.title.clone()),
            id: rule.id.clone(),
            logsource: Some(logsource_label(&rule.logsource)),
            category: served_category(&rule.logsource),
            error: None,
            warnings: Vec::new(),
        };
        match self.try_add(file, rule, &mut outcome) {
            Ok(()) => {}
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }

    fn try_add(&mut self, file: &str, rule: &SigmaRule, outcome: &mut RuleOutcome) -> Result<(), LoadError> {
        let category = outcome.category.ok_or_else(|| LoadError::UnsupportedLogsource { logsource: logsource_label(&rule.logsource) })?;
        check_modifiers(rule)?;
        if let Some(enabled) = &self.enabled {
            if !enabled.contains(&category) {
                return Err(LoadError::CategoryDisabled { category: category.as_str().into() });
            }
        }
        let key = rule.id.clone().unwrap_or_else(|| rule.title.clone());
        if let Some(first) = self.seen.get(&key) {
            return Err(LoadError::DuplicateId { id: key, first_file: first.clone() });
        }
        let mut compiled = compile_rule(rule).map_err(|e| LoadError::from_eval(&e))?;
        outcome.warnings.extend(field_warnings(rule, category));
        let index = self.rules.len();
        Arc::make_mut(&mut compiled.custom_attributes).insert(INDEX_ATTRIBUTE.to_string(), serde_json::Value::from(index));
        self.compiled[category.index()].push(compiled);
        self.seen.insert(key.clone(), file.to_string());
        self.rules.push(RuleMeta {
            key,
            title: rule.title.clone(),
            severity: rule.level.unwrap_or(DEFAULT_LEVEL),
            techniques: techniques(&rule.tags),
            author: rule.author.clone().filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "unknown".to_string()),
            reference: rule.references.first().cloned(),
            category,
            file: file.to_string(),
        });
        Ok(())
    }

    /// The rule set (compiled, see [`EvalMode`]) and what happened to every rule.
    pub fn finish(self) -> (RuleSet, Vec<RuleOutcome>) {
        self.finish_with(EvalMode::default())
    }

    /// [`Loader::finish`] with the rules evaluated as `mode` says.
    pub fn finish_with(self, mode: EvalMode) -> (RuleSet, Vec<RuleOutcome>) {
        let engines = self.compiled.into_iter().map(|rules| CategoryRules::new(rules, mode)).collect();
        (RuleSet { engines, rules: self.rules }, self.outcomes)
    }
}

/// Refuses modifiers this plugin cannot honour even though they compile.
fn check_modifiers(rule: &SigmaRule) -> Result<(), LoadError> {
    let mut result = Ok(());
    for_each_item(rule, &mut |_, modifiers| {
        for m in modifiers {
            let reason = match m {
                Modifier::Expand => "placeholders (`%name%`) are not configured in this agent",
                Modifier::Minute | Modifier::Hour | Modifier::Day | Modifier::Week | Modifier::Month | Modifier::Year => {
                    "our events have no timestamp field to compare"
                }
                _ => continue,
            };
            if result.is_ok() {
                // `Modifier` serializes to its Sigma spelling (`expand`, `hour`, ...).
                let modifier = serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{m:?}"));
                result = Err(LoadError::UnsupportedModifier { modifier, reason: reason.to_string() });
            }
        }
    });
    result
}

/// Warnings for fields the rule uses that this plugin never sets.
fn field_warnings(rule: &SigmaRule, category: Category) -> Vec<String> {
    let mut names = BTreeSet::new();
    for_each_item(rule, &mut |name, _| {
        if let Some(n) = name {
            names.insert(n.to_string());
        }
    });
    names
        .into_iter()
        .filter(|n| !category.fields().iter().any(|f| f.eq_ignore_ascii_case(n)))
        .map(|n| match ABSENT_FIELDS.iter().find(|(f, _)| f.eq_ignore_ascii_case(&n)) {
            Some((_, why)) => format!("field {n} is never set ({why}): conditions on it never match"),
            None => format!("field {n} is not in this plugin's {category} mapping: conditions on it never match"),
        })
        .collect()
}

/// Calls `visit` with the field name and modifiers of every detection item.
fn for_each_item(rule: &SigmaRule, visit: &mut dyn FnMut(Option<&str>, &[Modifier])) {
    fn walk(d: &Detection, visit: &mut dyn FnMut(Option<&str>, &[Modifier])) {
        match d {
            Detection::AllOf(items) => {
                for i in items {
                    visit(i.field.name.as_deref(), &i.field.modifiers);
                }
            }
            Detection::AnyOf(ds) | Detection::And(ds) => ds.iter().for_each(|d| walk(d, visit)),
            Detection::Keywords(_) => {}
            Detection::ArrayMatch { field, body, .. } => {
                visit(Some(field), &[]);
                walk(body, visit);
            }
            Detection::Conditional { named, .. } => named.values().for_each(|d| walk(d, visit)),
        }
    }
    for d in rule.detection.named.values() {
        walk(d, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn technique_tags() {
        let tags: Vec<String> =
            ["attack.execution", "attack.t1059.004", "attack.T1105", "attack.g0032", "attack.s0002", "attack.t1059.004", "cve.2021-44228", "attack.t12"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(techniques(&tags), vec!["T1059.004", "T1105"]);
    }

    #[test]
    fn positions_from_messages() {
        assert_eq!(find_position("YAML parse error: did not find expected key at line 7 column 5, while parsing"), (Some(7), Some(5)));
        assert_eq!(find_position("Condition parse error at 1:12: expected identifier"), (Some(1), Some(12)));
        let pest = "Condition parse error at 1:8:  --> 1:8\n  |\n1 | s and (\n  |        ^---\n  |\n  = expected expr";
        assert_eq!(condition_message(pest).as_deref(), Some("condition `s and (`: expected expr at column 8"));
        assert_eq!(
            one_line("invalid regex pattern: regex parse error:\n    (x\n    ^\nerror: unclosed group"),
            "invalid regex pattern: regex parse error: unclosed group"
        );
        assert_eq!(find_position("Missing required field 'title'"), (None, None));
    }

    #[test]
    fn unknown_modifier_message() {
        let e = LoadError::from_parser_message("Unknown modifier 'containz'");
        assert_eq!(e, LoadError::UnsupportedModifier { modifier: "containz".into(), reason: "not a Sigma modifier".into() });
    }
}
