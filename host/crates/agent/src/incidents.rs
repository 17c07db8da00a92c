//! The alert writer's side of `edr-incident`: each alert's process lineage
//! from the process tree, its incident, the `edr.incident.*` fields of its
//! ECS document, and the incident as the record keeps it.

use edr_event::{Alert, EventBody, ProcessInfo};
use edr_incident::{AlertFacts, Grouper, Incident, IncidentConfig, Process, Verdict};
use serde_json::{json, Value};
use std::sync::Arc;

/// The process and its ancestors, parent first (the agent's process tree).
pub type LineageSource = Arc<dyn Fn(u64) -> Vec<ProcessInfo> + Send + Sync>;

/// Groups the alerts the writer sees.
pub struct IncidentTagger {
    grouper: Grouper,
    lineage: LineageSource,
    hostname: String,
    suppressed: u64,
}

/// One alert's incident, as the writer uses it.
pub struct Tagged {
    /// What grouping decided.
    pub verdict: Verdict,
    /// The incident after this alert, for the record.
    pub record: edr_store::IncidentRecord,
}

impl IncidentTagger {
    /// Groups with `cfg`, looking lineages up in `lineage`; incidents are
    /// recorded as happening on `hostname`.
    pub fn new(cfg: IncidentConfig, lineage: LineageSource, hostname: String) -> IncidentTagger {
        IncidentTagger { grouper: Grouper::new(cfg), lineage, hostname, suppressed: 0 }
    }

    /// Repeats not sent to outputs so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Groups one alert.
    pub fn tag(&mut self, alert: &Alert) -> Tagged {
        let lineage = self.lineage_of(alert);
        let f = &alert.finding;
        let facts = AlertFacts { alert_id: alert.id, time: alert.time, rule_id: &f.rule_id, rule_name: &f.title, severity: f.severity, lineage: &lineage };
        let verdict = self.grouper.add(&facts);
        self.suppressed += u64::from(verdict.suppressed);
        let incident = self.grouper.incident(verdict.incident_id).expect("the incident an alert was just added to");
        Tagged { verdict, record: record(incident, &self.hostname) }
    }

    /// The alerted process and its ancestors: from the process tree, or,
    /// when the tree does not know the process, what the event says.
    fn lineage_of(&self, alert: &Alert) -> Vec<Process> {
        let Some(ev) = &alert.event else { return Vec::new() };
        let Some(entity) = ev.entity_id().filter(|e| *e != 0) else { return Vec::new() };
        let known = (self.lineage)(entity);
        let parent = match &ev.body {
            EventBody::ProcessExec(x) if x.parent_entity_id != 0 && x.parent_entity_id != entity => {
                Some(Process { entity_id: x.parent_entity_id, pid: x.ppid, exe: x.parent_exe.clone() })
            }
            _ => None,
        };
        if known.first().is_some_and(|p| p.entity_id == entity) {
            let mut chain: Vec<Process> = known.into_iter().map(|p| Process { entity_id: p.entity_id, pid: p.pid, exe: p.exe }).collect();
            // The tree knows the process but not its parent (started before
            // the agent, say): the exec event names it.
            if chain.len() == 1 {
                chain.extend(parent);
            }
            return chain;
        }
        let exe = match &ev.body {
            EventBody::ProcessExec(x) => x.exe.clone(),
            EventBody::File(x) => x.exe.clone().unwrap_or_default(),
            EventBody::Network(x) => x.exe.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let mut chain = vec![Process { entity_id: entity, pid: ev.pid().unwrap_or(0), exe }];
        chain.extend(parent);
        chain
    }
}

/// The incident as the record keeps it.
fn record(i: &Incident, hostname: &str) -> edr_store::IncidentRecord {
    edr_store::IncidentRecord {
        id: i.id,
        first_time: i.first_time,
        last_time: i.last_time,
        hostname: hostname.to_string(),
        root_entity_id: i.root.as_ref().map(|r| r.entity_id),
        root_pid: i.root.as_ref().map(|r| r.pid),
        root_exe: i.root.as_ref().map(|r| r.exe.clone()).unwrap_or_default(),
        severity: i.severity(),
        score: i.score(),
        alert_count: i.alert_count,
        suppressed: i.suppressed,
        rules: i.rules.iter().map(|r| edr_store::IncidentRule { id: r.id.clone(), name: r.name.clone(), severity: r.severity, count: r.count }).collect(),
        summary: i.summary(),
    }
}

/// Adds `edr.incident.{id, alert_count, suppressed, score}` to an alert's
/// ECS document (the incident as it stands after this alert).
pub fn add_ecs_fields(doc: &mut Value, t: &Tagged) {
    let Some(obj) = doc.as_object_mut() else { return };
    let edr = obj.entry("edr").or_insert_with(|| json!({}));
    if let Some(edr) = edr.as_object_mut() {
        edr.insert(
            "incident".into(),
            json!({
                "id": t.verdict.incident_id.to_string(),
                "alert_count": t.record.alert_count,
                "suppressed": t.record.suppressed,
                "score": t.record.score,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_event::{Event, Finding, ProcessExec, Severity};

    fn alert(id: u64, event: Option<Event>) -> Alert {
        let finding = Finding {
            rule_id: "r".into(),
            title: "R".into(),
            severity: Severity::Medium,
            techniques: vec![],
            message: "m".into(),
            author: "a".into(),
            event_ids: vec![],
            evidence: vec![],
        };
        Alert { id, time: id, plugin: "p".into(), pack: None, finding, event }
    }

    fn exec(entity: u64, parent: u64) -> Event {
        let body = EventBody::ProcessExec(ProcessExec { pid: 7, ppid: 6, entity_id: entity, parent_entity_id: parent, exe: "/x".into(), ..Default::default() });
        Event { id: 1, time: 1, partial: false, body }
    }

    #[test]
    fn the_event_stands_in_for_an_unknown_tree_and_fields_are_added() {
        let empty: LineageSource = Arc::new(|_| Vec::new());
        let mut t = IncidentTagger::new(IncidentConfig::default(), empty, "h".into());
        assert_eq!(t.lineage_of(&alert(1, Some(exec(70, 60)))).iter().map(|p| p.entity_id).collect::<Vec<_>>(), vec![70, 60]);
        assert!(t.lineage_of(&alert(1, Some(exec(0, 60)))).is_empty(), "entity 0 is no process");
        assert!(t.lineage_of(&alert(1, None)).is_empty());
        // A tree that knows the process only: the event adds the parent.
        let alone: LineageSource = Arc::new(|e| vec![ProcessInfo { entity_id: e, pid: 7, ..Default::default() }]);
        let t2 = IncidentTagger::new(IncidentConfig::default(), alone, "h".into());
        assert_eq!(t2.lineage_of(&alert(1, Some(exec(70, 60)))).iter().map(|p| p.entity_id).collect::<Vec<_>>(), vec![70, 60]);
        let a = t.tag(&alert(1, Some(exec(70, 60))));
        let b = t.tag(&alert(2, Some(exec(70, 60))));
        assert_eq!((a.verdict.incident_id, b.verdict.incident_id, b.verdict.suppressed, t.suppressed()), (1, 1, true, 1));
        assert_eq!((b.record.hostname.as_str(), b.record.alert_count, b.record.root_entity_id), ("h", 2, Some(60)));
        let mut doc = json!({"edr": {"plugin": "p"}});
        add_ecs_fields(&mut doc, &b);
        assert_eq!(doc["edr"]["incident"], json!({"id": "1", "alert_count": 2, "suppressed": 1, "score": 47}));
        assert_eq!(doc["edr"]["plugin"], "p");
        let mut not_an_object = json!([1]);
        add_ecs_fields(&mut not_an_object, &b);
        assert_eq!(not_an_object, json!([1]));
    }
}
