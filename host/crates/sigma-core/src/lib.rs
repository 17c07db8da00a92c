//! Sigma rules for `edr`, without the plugin contract.
//!
//! What the `sigma` detection plugin (`plugins/sigma`) and the agent's
//! `edr sigma check` share: the logsource categories served and the fields
//! set for each ([`category`]), loading rule files into one `rsigma` engine
//! per category with a verdict for every rule ([`rules`]), and the report on
//! a directory of rules ([`check_dir`]). The plugin adds the mapping of its
//! events to Sigma fields and the findings; this crate depends neither on
//! `edr-sdk` nor on `wit-bindgen`, so the agent links it natively while the
//! plugin runs it inside its Wasm sandbox: both give the same verdict because
//! both run the same [`rules::Loader`].

#![deny(missing_docs)]

pub mod category;
mod check;
pub mod compiled;
pub mod rules;

pub use category::Category;
pub use check::{check_dir, CategoryCounts, CheckReport, CheckSummary};
/// The engine, re-exported so the plugin evaluates with the exact version loaded here.
pub use rsigma_eval;
/// The parser, re-exported for its types (`Level`, ...).
pub use rsigma_parser;
pub use rules::{CategoryRules, EvalMode, LoadError, Loader, RuleMeta, RuleOutcome, RuleSet};

/// True when a file's name marks it as a rule file (`.yml` or `.yaml`, any case).
pub fn is_rule_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yml") || lower.ends_with(".yaml")
}
