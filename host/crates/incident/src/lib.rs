//! `edr-incident`: alerts grouped into incidents.
//!
//! One attack is many alerts: a `useradd` alone writes `/etc/passwd`,
//! `/etc/shadow`, `/etc/group` and `/etc/gshadow` and runs helpers, and each
//! of those may match a rule. An operator wants one incident that says
//! what happened, not a dozen lines. This crate is the pure logic (no I/O,
//! no clock: the alerts' own times) that the agent's alert writer runs:
//!
//! * **Storyline.** Each alert comes with its process's lineage (the
//!   process, then its ancestors, parent first, as `edr_ancestry::walk`
//!   yields them). Its *storyline root* is the ancestor
//!   [`IncidentConfig::depth`] generations up (default 1: the parent), or the
//!   highest one below init (pid 1) when the tree is shallower, so that two
//!   services started by init are never one story. An alert joins the open
//!   incident whose storyline roots include its process or one of its
//!   ancestors (the nearest wins), and adds its own root and its process;
//!   otherwise it opens a new incident. An incident's root moves up when an
//!   alert roots higher in its tree; incidents never merge. An alert without a process (the agent's own notices)
//!   is an incident of its own.
//! * **Window.** An incident stays open while alerts keep coming: an alert
//!   more than [`IncidentConfig::window_ns`] after the incident's last one
//!   (default 30 minutes) opens a new incident.
//! * **Repeats.** The same rule on the same process (entity id) again is a
//!   repeat: counted ([`Incident::suppressed`]) and, when
//!   [`IncidentConfig::suppress_repeats`] is on, not sent to outputs again
//!   ([`Verdict::suppressed`]); the record keeps every alert.
//! * **Score** ([`Incident::score`], 1-100): the highest ECS severity among
//!   the incident's rules, plus a quarter of the severity of each other
//!   distinct rule, capped at 100. Repeats add nothing.
//! * **Summary** ([`Incident::summary`]): one line for people.
//!
//! An incident's id is the id of its first alert: unique in the agent's
//! record and stable, so a fleet server can group by it with the host id.
//!
//! ```
//! use edr_incident::{AlertFacts, Grouper, IncidentConfig, Process};
//! use edr_event::Severity;
//! let p = |e, pid, exe: &str| Process { entity_id: e, pid, exe: exe.into() };
//! let mut g = Grouper::new(IncidentConfig::default());
//! let useradd = [p(30, 300, "/usr/sbin/useradd"), p(20, 200, "/usr/bin/sudo"), p(1, 1, "/sbin/init")];
//! let facts = |id, rule: &'static str| AlertFacts { alert_id: id, time: id * 1_000_000_000, rule_id: rule, rule_name: rule, severity: Severity::Medium, lineage: &useradd };
//! let a = g.add(&facts(7, "account-created"));
//! let b = g.add(&facts(8, "passwd-written"));
//! let c = g.add(&facts(9, "passwd-written"));
//! assert_eq!((a.incident_id, b.incident_id, c.incident_id), (7, 7, 7));
//! assert!(!b.suppressed && c.suppressed, "the third is a repeat of the second");
//! let incident = g.incident(7).unwrap();
//! assert_eq!((incident.alert_count, incident.suppressed, incident.rules.len()), (3, 1, 2));
//! ```
#![deny(missing_docs)]

use edr_event::Severity;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Default window: 30 minutes, in ns.
pub const DEFAULT_WINDOW_NS: u64 = 30 * 60 * 1_000_000_000;

/// How alerts are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentConfig {
    /// An incident takes alerts up to this long (ns) after its last one.
    pub window_ns: u64,
    /// Generations above the alerted process that root its storyline
    /// (0: the process itself; 1: its parent, so siblings group).
    pub depth: usize,
    /// Repeats are not sent to outputs again (they are always counted).
    pub suppress_repeats: bool,
    /// Open incidents kept at most; the least recently active is closed
    /// first (bounds memory on a host that alerts without pause).
    pub max_open: usize,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self { window_ns: DEFAULT_WINDOW_NS, depth: 1, suppress_repeats: true, max_open: 4096 }
    }
}

/// Storyline roots one incident keeps at most (then it takes no new roots).
const MAX_ROOTS: usize = 1024;
/// Distinct (rule, process) pairs one incident tracks for repeats at most.
const MAX_REPEAT_KEYS: usize = 4096;
/// Distinct rules one incident lists at most (more are counted, not listed).
const MAX_RULES: usize = 256;

/// A process in a lineage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Entity id (unique on the host, stable across pid reuse).
    pub entity_id: u64,
    /// Process id.
    pub pid: u32,
    /// Executable, where known (may be empty).
    pub exe: String,
}

/// What grouping needs of one alert.
#[derive(Debug, Clone, Copy)]
pub struct AlertFacts<'a> {
    /// The alert's id (the id of the incident it opens).
    pub alert_id: u64,
    /// When it was raised (ns since the epoch).
    pub time: u64,
    /// Rule id.
    pub rule_id: &'a str,
    /// Rule title.
    pub rule_name: &'a str,
    /// Severity.
    pub severity: Severity,
    /// The alerted process, then its ancestors, parent first; empty when
    /// the alert concerns no process.
    pub lineage: &'a [Process],
}

/// One rule's alerts in an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTally {
    /// Rule id.
    pub id: String,
    /// Rule title.
    pub name: String,
    /// The highest severity it was raised with.
    pub severity: Severity,
    /// Alerts of this rule, repeats included.
    pub count: u64,
}

/// An incident: the alerts of one storyline within the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// The id of its first alert.
    pub id: u64,
    /// Time of its first alert (ns).
    pub first_time: u64,
    /// Time of its latest alert (ns).
    pub last_time: u64,
    /// The top of its process tree: the highest storyline root of its
    /// alerts; `None` for an alert without a process.
    pub root: Option<Process>,
    /// Alerts, repeats included.
    pub alert_count: u64,
    /// Repeats (same rule, same process) among them.
    pub suppressed: u64,
    /// Its rules, in the order first seen (at most 256 listed).
    pub rules: Vec<RuleTally>,
}

impl Incident {
    fn new(f: &AlertFacts, root: Option<Process>) -> Incident {
        Incident { id: f.alert_id, first_time: f.time, last_time: f.time, root, alert_count: 0, suppressed: 0, rules: Vec::new() }
    }

    /// The highest severity of its rules.
    pub fn severity(&self) -> Severity {
        self.rules.iter().map(|r| r.severity).max().unwrap_or(Severity::Informational)
    }

    /// 1-100: the highest rule severity (ECS score) plus a quarter
    /// (rounded up) of each other rule's, at most 100.
    pub fn score(&self) -> u8 {
        let mut scores: Vec<u32> = self.rules.iter().map(|r| u32::from(r.severity.ecs_score())).collect();
        scores.sort_unstable_by(|a, b| b.cmp(a));
        let Some((top, rest)) = scores.split_first() else { return 1 };
        let total = top + rest.iter().map(|s| s.div_ceil(4)).sum::<u32>();
        total.min(100) as u8
    }

    /// One line for people: how many alerts of how many rules, in which
    /// process tree, the leading rules (by severity, then count).
    pub fn summary(&self) -> String {
        let mut rules: Vec<&RuleTally> = self.rules.iter().collect();
        rules.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.count.cmp(&a.count)));
        let shown: Vec<String> = rules.iter().take(3).map(|r| if r.count > 1 { format!("{} (x{})", r.name, r.count) } else { r.name.clone() }).collect();
        let more = if rules.len() > 3 { format!(" and {} more", rules.len() - 3) } else { String::new() };
        let plural = |n: u64, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
        let place = match &self.root {
            Some(p) if !p.exe.is_empty() => format!(" in the process tree of {} (pid {})", p.exe, p.pid),
            Some(p) => format!(" in the process tree of pid {}", p.pid),
            None => String::new(),
        };
        let repeats = if self.suppressed > 0 { format!(", {}", plural(self.suppressed, "repeat", "repeats")) } else { String::new() };
        format!(
            "{}: {} of {}{place}{repeats}: {}{more}",
            self.severity().as_str(),
            plural(self.alert_count, "alert", "alerts"),
            plural(self.rules.len() as u64, "rule", "rules"),
            shown.join(", ")
        )
    }

    fn count(&mut self, f: &AlertFacts, repeat: bool) {
        self.alert_count += 1;
        self.suppressed += u64::from(repeat);
        self.first_time = self.first_time.min(f.time);
        self.last_time = self.last_time.max(f.time);
        if let Some(r) = self.rules.iter_mut().find(|r| r.id == f.rule_id) {
            r.count += 1;
            r.severity = r.severity.max(f.severity);
        } else if self.rules.len() < MAX_RULES {
            self.rules.push(RuleTally { id: f.rule_id.to_string(), name: f.rule_name.to_string(), severity: f.severity, count: 1 });
        }
    }
}

/// What grouping decided for one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The incident it belongs to.
    pub incident_id: u64,
    /// A repeat that outputs should not get again.
    pub suppressed: bool,
    /// How many times this rule has now fired on this process in the
    /// incident (1 for the first).
    pub occurrence: u64,
}

/// An open incident and what it matches.
struct Open {
    incident: Incident,
    /// Entity ids of its storyline roots.
    roots: Vec<u64>,
    /// (rule id, entity id) -> alerts.
    repeats: HashMap<(String, u64), u64>,
}

/// The grouping state: open incidents and an index of their roots.
pub struct Grouper {
    cfg: IncidentConfig,
    open: HashMap<u64, Open>,
    /// Storyline root entity -> the open incidents holding it (newest last).
    by_root: HashMap<u64, Vec<u64>>,
    /// The latest alert time seen.
    now: u64,
    /// Incidents of alerts without a process (not kept open).
    last_lone: Option<Incident>,
    /// When closed incidents were last looked for.
    last_sweep: u64,
}

/// Whether `p` is init, above every storyline.
fn is_init(p: &Process) -> bool {
    p.pid == 1
}

/// The lineage below init (the whole lineage when the alerted process is init).
fn below_init(lineage: &[Process]) -> &[Process] {
    match lineage.iter().position(is_init) {
        Some(0) => &lineage[..1],
        Some(i) => &lineage[..i],
        None => lineage,
    }
}

/// The storyline root of a lineage: the ancestor `depth` generations up,
/// or the highest one below init; `None` for an empty lineage.
pub fn storyline_root(lineage: &[Process], depth: usize) -> Option<&Process> {
    let tree = below_init(lineage);
    tree.get(depth.min(tree.len().saturating_sub(1)))
}

impl Grouper {
    /// No incidents yet.
    pub fn new(cfg: IncidentConfig) -> Grouper {
        Grouper { cfg, open: HashMap::new(), by_root: HashMap::new(), now: 0, last_lone: None, last_sweep: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &IncidentConfig {
        &self.cfg
    }

    /// Incidents open now.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// An open incident (or the last one of an alert without a process).
    pub fn incident(&self, id: u64) -> Option<&Incident> {
        self.open.get(&id).map(|o| &o.incident).or(self.last_lone.as_ref().filter(|i| i.id == id))
    }

    /// Groups one alert: which incident, whether it is a repeat.
    pub fn add(&mut self, f: &AlertFacts) -> Verdict {
        self.now = self.now.max(f.time);
        self.expire();
        let tree = below_init(f.lineage);
        let Some(root) = storyline_root(f.lineage, self.cfg.depth).cloned() else {
            let mut i = Incident::new(f, None);
            i.count(f, false);
            self.last_lone = Some(i);
            return Verdict { incident_id: f.alert_id, suppressed: false, occurrence: 1 };
        };
        let id = match self.find(tree, f.time) {
            Some(id) => id,
            None => self.open_new(f, root.clone()),
        };
        let depth_of = |entity: u64| tree.iter().position(|p| p.entity_id == entity);
        let open = self.open.get_mut(&id).expect("found or just opened");
        // Its root, and the process itself: a later alert that knows less
        // of the tree (only the process, say) still finds the incident.
        for entity in [root.entity_id, tree[0].entity_id] {
            if !open.roots.contains(&entity) && open.roots.len() < MAX_ROOTS {
                open.roots.push(entity);
                self.by_root.entry(entity).or_default().push(id);
            }
        }
        // The alert's root is above the incident's: the incident's tree grows up to it.
        let current = open.incident.root.as_ref().and_then(|r| depth_of(r.entity_id));
        if current.is_some_and(|c| depth_of(root.entity_id).is_some_and(|d| d > c)) {
            open.incident.root = Some(root);
        }
        let key = (f.rule_id.to_string(), tree[0].entity_id);
        let occurrence = match open.repeats.get_mut(&key) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                if open.repeats.len() < MAX_REPEAT_KEYS {
                    open.repeats.insert(key, 1);
                }
                1
            }
        };
        let repeat = occurrence > 1;
        open.incident.count(f, repeat);
        Verdict { incident_id: id, suppressed: repeat && self.cfg.suppress_repeats, occurrence }
    }

    /// The open incident whose roots hold the nearest process of `tree`
    /// and whose window covers `time`.
    fn find(&self, tree: &[Process], time: u64) -> Option<u64> {
        let window = self.cfg.window_ns;
        tree.iter().find_map(|p| {
            self.by_root.get(&p.entity_id)?.iter().rev().copied().find(|id| {
                self.open.get(id).is_some_and(|o| time <= o.incident.last_time.saturating_add(window) && time.saturating_add(window) >= o.incident.first_time)
            })
        })
    }

    fn open_new(&mut self, f: &AlertFacts, root: Process) -> u64 {
        if self.open.len() >= self.cfg.max_open.max(1) {
            if let Some(oldest) = self.open.values().min_by_key(|o| (o.incident.last_time, o.incident.id)).map(|o| o.incident.id) {
                self.close(oldest);
            }
        }
        let id = f.alert_id;
        // An id seen before (a replayed record): the old incident gives way.
        self.close(id);
        self.open.insert(id, Open { incident: Incident::new(f, Some(root)), roots: Vec::new(), repeats: HashMap::new() });
        id
    }

    /// Closes incidents whose window has passed.
    /// Runs at most every 1/16th of a window (or when the table is full):
    /// [`Grouper::find`] checks each incident's window itself.
    fn expire(&mut self) {
        let (now, window) = (self.now, self.cfg.window_ns);
        if now < self.last_sweep.saturating_add(window / 16) && self.open.len() < self.cfg.max_open {
            return;
        }
        self.last_sweep = now;
        let done: Vec<u64> = self.open.values().filter(|o| o.incident.last_time.saturating_add(window) < now).map(|o| o.incident.id).collect();
        for id in done {
            self.close(id);
        }
    }

    fn close(&mut self, id: u64) {
        let Some(o) = self.open.remove(&id) else { return };
        for r in o.roots {
            if let Some(ids) = self.by_root.get_mut(&r) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_root.remove(&r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
