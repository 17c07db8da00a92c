//! The [`Detector`] trait and what a detection reports.

use crate::types::{Config, Event, EventKind, Finding, Severity};

/// A detection plugin.
///
/// The agent creates one instance per loaded plugin with [`Detector::init`],
/// then calls [`Detector::on_events`] with batches of the event kinds listed
/// in [`Detector::SUBSCRIPTIONS`]. Events are borrowed views into the batch
/// (see [`crate::Event`]): copy out what you keep between batches. State kept in `self` lives as long as the
/// instance; use [`crate::host::state`] for state that must survive a plugin
/// update or an agent restart.
pub trait Detector: Sized + 'static {
    /// Plugin name, shown in alerts (`edr.plugin`) and status.
    const NAME: &'static str;
    /// Plugin version; `env!("CARGO_PKG_VERSION")` is a good choice.
    const VERSION: &'static str;
    /// One line on what the plugin detects.
    const DESCRIPTION: &'static str = "";
    /// The event kinds this plugin wants. It is never called with others.
    const SUBSCRIPTIONS: &'static [EventKind];

    /// Builds the detector from its configuration. Return `Err` with a message
    /// an operator can act on when the configuration is unusable.
    fn init(config: &Config) -> Result<Self, String>;

    /// Looks at one event and reports what it finds.
    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings);

    /// Looks at a batch. The default calls [`Detector::on_event`] for each
    /// event; override it to work on the whole batch at once.
    fn on_events(&mut self, events: &[Event<'_>], findings: &mut Findings) {
        for event in events {
            self.on_event(event, findings);
        }
    }
}

/// A detection rule's identity, written once as a `const` and reused by every
/// finding it produces.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Stable id, e.g. `acme.lineage.webserver-shell`.
    pub id: &'static str,
    /// Short title, shown as `rule.name`.
    pub title: &'static str,
    /// Severity of a match.
    pub severity: Severity,
    /// MITRE ATT&CK technique ids.
    pub techniques: &'static [&'static str],
    /// Who wrote the rule; credited in every alert.
    pub author: &'static str,
    /// What the rule looks for and why it matters.
    pub description: &'static str,
}

impl Rule {
    /// A finding of this rule about `event`.
    pub fn finding(&self, event: &Event<'_>, message: impl Into<String>) -> Finding {
        Finding {
            rule_id: self.id.to_string(),
            title: self.title.to_string(),
            severity: self.severity,
            techniques: self.techniques.iter().map(|t| t.to_string()).collect(),
            message: message.into(),
            author: self.author.to_string(),
            event_ids: vec![event.id],
            evidence: Vec::new(),
        }
    }
}

/// The findings of one batch.
#[derive(Debug, Default)]
pub struct Findings {
    items: Vec<Finding>,
}

impl Findings {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports that `rule` matched `event`; returns the finding so evidence
    /// can be added: `findings.report(&RULE, e, "msg").evidence.push(...)`.
    pub fn report(&mut self, rule: &Rule, event: &Event<'_>, message: impl Into<String>) -> &mut Finding {
        self.items.push(rule.finding(event, message));
        self.items.last_mut().expect("just pushed")
    }

    /// Adds a finding built by hand.
    pub fn push(&mut self, finding: Finding) {
        self.items.push(finding);
    }

    /// Number of findings so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The findings so far.
    pub fn as_slice(&self) -> &[Finding] {
        &self.items
    }

    /// The findings, consumed.
    pub fn into_vec(self) -> Vec<Finding> {
        self.items
    }
}
