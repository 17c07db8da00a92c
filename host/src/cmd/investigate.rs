//! Investigation over the record: `edr query`, `storyline`, `timeline`,
//! `search`, `export`. They open the store read-only, so they run beside the
//! agent (or on a copy of its store).

use edr_event::ecs::{event_to_ecs, EcsContext};
use edr_event::{Event, EventBody};
use edr_store::{Store, StorylineOptions, TimelineKey};
use std::path::PathBuf;

/// Where the store is.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Agent configuration (its data dir and [store] path).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The agent's data dir (overrides the config).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// The store file itself (overrides both).
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    pub(crate) fn open(&self) -> anyhow::Result<Store> {
        let path = match &self.store {
            Some(p) => p.clone(),
            None => {
                let mut cfg = super::load_config(self.config.as_deref())?;
                if let Some(d) = &self.data_dir {
                    cfg.data_dir = d.clone();
                }
                cfg.store_config().path
            }
        };
        anyhow::ensure!(path.exists(), "no event store at {} (has the agent run with this data dir?)", path.display());
        Ok(Store::open_read_only(&path)?)
    }
}

/// A time: RFC 3339, or a duration before now such as `15m`, `2h`, `7d`.
fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Ok(t) = edr_event::time::parse_rfc3339(s) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s).map_err(|_| anyhow::anyhow!("`{s}` is neither an RFC 3339 time nor a duration like 15m, 2h, 7d"))?;
    Ok(edr_event::time::now().saturating_sub(d.as_nanos() as u64))
}

pub(crate) fn times(since: &Option<String>, until: &Option<String>) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    Ok((since.as_deref().map(parse_time).transpose()?, until.as_deref().map(parse_time).transpose()?))
}

/// `edr query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// One SELECT (or WITH) statement over the views: process, file, network,
    /// login, alert, action, incident (see `edr query --schema`).
    pub sql: Option<String>,
    /// Print the documented tables and views.
    #[arg(long)]
    pub schema: bool,
    /// JSON lines (one object per row) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn query(a: QueryArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    if a.schema {
        for view in ["process", "file", "network", "login", "alert", "action", "incident"] {
            let r = store.query(&format!("SELECT name, type FROM pragma_table_info('{view}')"))?;
            let cols: Vec<String> =
                r.rows.iter().map(|row| format!("{} {}", row[0].as_str().unwrap_or("?"), row[1].as_str().unwrap_or("")).trim().to_string()).collect();
            println!("{view}: {}", cols.join(", "));
        }
        return Ok(());
    }
    let sql = a.sql.ok_or_else(|| anyhow::anyhow!("give a SELECT statement, or --schema"))?;
    let r = store.query(&sql)?;
    if a.json {
        for row in &r.rows {
            let obj: serde_json::Map<String, serde_json::Value> = r.columns.iter().cloned().zip(row.iter().cloned()).collect();
            println!("{}", serde_json::Value::Object(obj));
        }
    } else {
        print_table(&r.columns, &r.rows);
    }
    if r.truncated {
        eprintln!("edr query: output truncated at {} rows; narrow the query or add LIMIT", r.rows.len());
    }
    Ok(())
}

pub(crate) fn print_table(columns: &[String], rows: &[Vec<serde_json::Value>]) {
    let cell = |v: &serde_json::Value| -> String {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        if s.chars().count() > 80 {
            s.chars().take(79).collect::<String>() + "…"
        } else {
            s
        }
    };
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let widths: Vec<usize> = columns.iter().enumerate().map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.len()]).max().unwrap_or(0)).collect();
    let line = |vals: Vec<&str>| vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string();
    println!("{}", line(columns.iter().map(String::as_str).collect()));
    println!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    for r in &cells {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    println!("({} rows)", rows.len());
}

/// One line describing an event, for the human outputs.
fn describe(e: &Event) -> String {
    let t = edr_event::time::to_rfc3339(e.time);
    let t = t.get(..23).unwrap_or(&t);
    let partial = if e.partial { " (partial)" } else { "" };
    match &e.body {
        EventBody::ProcessExec(x) => {
            format!("{t}  exec    pid {:<7} {} {}{partial}", x.pid, x.exe, x.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" "))
        }
        EventBody::ProcessExit(x) => format!("{t}  exit    pid {:<7} code {}", x.pid, x.exit_code),
        EventBody::File(f) => format!(
            "{t}  file    pid {:<7} {} {}{}",
            f.pid.map(|p| p.to_string()).unwrap_or_default(),
            f.op,
            f.path,
            f.old_path.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default()
        ),
        EventBody::Network(n) => format!(
            "{t}  net     pid {:<7} {} {}:{} -> {}:{} ({}){}",
            n.pid.map(|p| p.to_string()).unwrap_or_default(),
            n.op,
            n.local_ip,
            n.local_port,
            n.remote_ip,
            n.remote_port,
            n.transport,
            match (n.bytes_sent, n.bytes_received) {
                (None, None) => String::new(),
                (sent, received) => format!(" sent {} received {}", byte_count(sent), byte_count(received)),
            }
        ),
        EventBody::Login(l) => format!(
            "{t}  login   {} from {} via {} ({})",
            l.user,
            l.source_ip.as_deref().unwrap_or("local"),
            l.service,
            if l.success { "ok" } else { "failed" }
        ),
    }
}

/// A byte count of a close, `?` when it is missing.
fn byte_count(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_string(), |n| n.to_string())
}

fn print_events(events: &[Event], json: bool) {
    let ctx = EcsContext { hostname: edr_agent::output::hostname() };
    for e in events {
        if json {
            println!("{}", event_to_ecs(e, &ctx));
        } else {
            println!("{}", describe(e));
        }
    }
}

/// `edr storyline`.
#[derive(Debug, clap::Args)]
pub struct StorylineArgs {
    /// The alert id (`event.id` of the alert document).
    pub alert: u64,
    /// Include the file and network activity of the ancestors too.
    #[arg(long)]
    pub ancestors: bool,
    /// ECS JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn storyline(a: StorylineArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    let opts = StorylineOptions { ancestor_activity: a.ancestors, ..StorylineOptions::default() };
    let s = store.storyline(a.alert, opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("alert {}: {} ({}) by plugin {}", s.alert.id, s.alert.rule_name, s.alert.rule_id, s.alert.plugin);
    if let Some(t) = &s.trigger {
        println!("trigger: {}", describe(t));
    }
    println!("\nprocesses (depth: negative = ancestors, 0 = the alert's process, positive = descendants):");
    for p in &s.processes {
        let exec = p.execs.first().and_then(|e| match &e.body {
            EventBody::ProcessExec(x) => Some(format!("pid {} {} {}", x.pid, x.exe, x.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" "))),
            _ => None,
        });
        println!("  {:>3} {:?} {}  {}", p.depth, p.role, edr_event::ecs::entity_id_string(p.entity_id), exec.unwrap_or_default());
    }
    println!("\nactivity:");
    for e in &s.events {
        println!("  [{:>3}] {}", e.depth, describe(&e.event));
    }
    if !s.related_alerts.is_empty() {
        println!("\nother alerts on these processes:");
        for r in &s.related_alerts {
            println!("  {} {} ({})", r.id, r.rule_name, r.plugin);
        }
    }
    if !s.actions.is_empty() {
        println!("\nresponse actions:");
        for r in &s.actions {
            println!("  {} {} {}: {:?} {}", r.id, r.action, r.target, r.decision, r.outcome);
        }
    }
    Ok(())
}

/// `edr timeline`.
#[derive(Debug, clap::Args)]
pub struct TimelineArgs {
    #[arg(long, group = "key")]
    pub pid: Option<u32>,
    /// Entity id (16 hex digits, as in `process.entity_id`).
    #[arg(long, group = "key")]
    pub entity: Option<String>,
    #[arg(long, group = "key")]
    pub path: Option<String>,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn timeline(a: TimelineArgs) -> anyhow::Result<()> {
    let key = match (a.pid, &a.entity, &a.path) {
        (Some(p), _, _) => TimelineKey::Pid(p),
        (_, Some(e), _) => TimelineKey::Entity(edr_event::ecs::entity_id_from_str(e)),
        (_, _, Some(p)) => TimelineKey::Path(p.clone()),
        _ => anyhow::bail!("give one of --pid, --entity or --path"),
    };
    let (since, until) = times(&a.since, &a.until)?;
    let store = a.store.open()?;
    print_events(&store.timeline(key, since, until, a.limit)?, a.json);
    Ok(())
}

/// `edr search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Text to find in command lines (case-insensitive).
    pub text: String,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn search(a: SearchArgs) -> anyhow::Result<()> {
    let (since, until) = times(&a.since, &a.until)?;
    let store = a.store.open()?;
    print_events(&store.search_command_line(&a.text, since, until, a.limit)?, a.json);
    Ok(())
}

/// `edr export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// From this time (RFC 3339, or a duration before now such as 24h).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    let (since, until) = times(&a.since, &a.until)?;
    let store = a.store.open()?;
    let n = match &a.output {
        Some(p) => {
            let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
            store.export(since, until, &mut f)?
        }
        None => store.export(since, until, &mut std::io::stdout().lock())?,
    };
    eprintln!("edr export: {n} events (ECS JSONL; `edr replay` reads it back)");
    Ok(())
}
