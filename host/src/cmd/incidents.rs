//! `edr incidents`: the record's incidents (alerts grouped by process tree),
//! or one incident's alerts.

use super::investigate::{print_table, times, StoreArgs};
use edr_event::time::to_rfc3339;
use serde_json::{json, Value};

/// `edr incidents`.
#[derive(Debug, clap::Args)]
pub struct IncidentsArgs {
    /// Show this incident and its alerts (repeats included) instead of the list.
    pub id: Option<u64>,
    /// Incidents active since (RFC 3339, or a duration ago: 15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Incidents active until.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many, the latest active first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// JSON lines (one incident, or alert, per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn ts(t: u64) -> String {
    let s = to_rfc3339(t);
    s.get(..19).map(|x| format!("{x}Z")).unwrap_or(s)
}

pub fn run(a: IncidentsArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    if let Some(id) = a.id {
        return show(&store, id, a.limit, a.json);
    }
    let (since, until) = times(&a.since, &a.until)?;
    let incidents = store.incidents(since, until, a.limit)?;
    if a.json {
        for i in &incidents {
            println!("{}", serde_json::to_string(i)?);
        }
        return Ok(());
    }
    let columns: Vec<String> = ["id", "score", "severity", "first", "last", "host", "root", "alerts", "repeats", "rules"].map(String::from).to_vec();
    let rows: Vec<Vec<Value>> = incidents
        .iter()
        .map(|i| {
            let root = match (i.root_pid, i.root_exe.as_str()) {
                (Some(pid), "") => format!("pid {pid}"),
                (Some(pid), exe) => format!("{exe} ({pid})"),
                (None, _) => "-".into(),
            };
            let rules: Vec<String> = i.rules.iter().map(|r| if r.count > 1 { format!("{} x{}", r.id, r.count) } else { r.id.clone() }).collect();
            vec![
                json!(i.id),
                json!(i.score),
                json!(i.severity.as_str()),
                json!(ts(i.first_time)),
                json!(ts(i.last_time)),
                json!(i.hostname),
                json!(root),
                json!(i.alert_count),
                json!(i.suppressed),
                json!(rules.join(", ")),
            ]
        })
        .collect();
    print_table(&columns, &rows);
    Ok(())
}

fn show(store: &edr_store::Store, id: u64, limit: usize, json: bool) -> anyhow::Result<()> {
    let incident = store.incident(id)?.ok_or_else(|| anyhow::anyhow!("no incident {id} in the record (never recorded, or removed by retention)"))?;
    let alerts = store.incident_alerts(id, limit)?;
    if json {
        println!("{}", serde_json::to_string(&incident)?);
        for a in &alerts {
            println!("{}", serde_json::to_string(a)?);
        }
        return Ok(());
    }
    println!("incident {}: score {}, {}", incident.id, incident.score, incident.summary);
    println!("host {}, {} to {}", incident.hostname, ts(incident.first_time), ts(incident.last_time));
    let columns: Vec<String> = ["alert", "time", "severity", "rule", "pid", "message"].map(String::from).to_vec();
    let rows: Vec<Vec<Value>> =
        alerts.iter().map(|a| vec![json!(a.id), json!(ts(a.time)), json!(a.severity.as_str()), json!(a.rule_id), json!(a.pid), json!(a.message)]).collect();
    print_table(&columns, &rows);
    Ok(())
}
