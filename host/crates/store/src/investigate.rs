//! Investigation queries: storylines, timelines, command-line search, export.

use crate::action::ActionRecord;
use crate::codec;
use crate::error::StoreError;
use crate::read::Pooled;
use edr_event::{Decision, Event, EventBody, PackRef, Severity, Timestamp};
use rusqlite::{params, Row};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;

/// What a timeline follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineKey {
    /// Every event attributed to this pid (across pid reuse: check the entity ids).
    Pid(u32),
    /// Every event of one process (its entity id).
    Entity(u64),
    /// Every file event on this exact path (as the path or, for renames, the previous path).
    Path(String),
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    /// Alert id.
    pub id: u64,
    /// When it fired, ns since the Unix epoch.
    pub time: Timestamp,
    /// Rule id (`edr.revshell.dev-tcp`).
    pub rule_id: String,
    /// Rule title.
    pub rule_name: String,
    /// Severity.
    pub severity: Severity,
    /// The plugin that fired it.
    pub plugin: String,
    /// The pack it came from.
    pub pack: Option<PackRef>,
    /// The events the finding names.
    pub event_ids: Vec<u64>,
    /// ATT&CK technique ids.
    pub techniques: Vec<String>,
    /// The finding's message.
    pub message: String,
    /// The triggering process's entity id, when known.
    pub entity_id: Option<u64>,
    /// The triggering process's pid, when known.
    pub pid: Option<u32>,
    /// The alert's ECS document, as `edr_event::ecs::alert_to_ecs` wrote it.
    pub ecs: serde_json::Value,
    /// The incident it belongs to (`None`: recorded without grouping).
    pub incident_id: Option<u64>,
}

/// Limits of a storyline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorylineOptions {
    /// Generations followed up (ancestors) and down (descendants).
    pub max_depth: u32,
    /// Processes in the story at most (descendants beyond are cut; `truncated` is set).
    pub max_processes: usize,
    /// Events in the story at most; those nearest the alert's time are kept.
    pub max_events: usize,
    /// Also include the ancestors' file, network and exit events, not just
    /// their execs (off by default: a service's own activity can be huge
    /// and is rarely part of the story).
    pub ancestor_activity: bool,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events at or before this time.
    pub until: Option<Timestamp>,
}

impl Default for StorylineOptions {
    fn default() -> Self {
        StorylineOptions { max_depth: 32, max_processes: 500, max_events: 5_000, ancestor_activity: false, since: None, until: None }
    }
}

/// Where a process or event stands relative to the alert's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An ancestor of the triggering process.
    Ancestor,
    /// The triggering process itself.
    Trigger,
    /// A descendant of the triggering process.
    Descendant,
}

/// A process of a storyline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoryProcess {
    /// Its entity id.
    pub entity_id: u64,
    /// Its parent's entity id, when known.
    pub parent_entity_id: Option<u64>,
    /// Ancestor, trigger or descendant.
    pub role: Role,
    /// Generations from the triggering process: negative for ancestors, 0 for it, positive for descendants.
    pub depth: i32,
    /// Its exec events in the store (more than one when it exec'd again), oldest first;
    /// empty when the store has none (it started before the record, or retention removed it).
    pub execs: Vec<Event>,
}

/// One event of a storyline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoryEvent {
    /// The role of the process it belongs to.
    pub role: Role,
    /// That process's depth (see [`StoryProcess::depth`]).
    pub depth: i32,
    /// The event.
    pub event: Event,
}

/// An alert's story: the process that triggered it, its ancestors and descendants, and what they did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Storyline {
    /// The alert.
    pub alert: AlertRecord,
    /// The event that triggered it (the first the finding names), from the
    /// store, or else the copy the alert carries.
    pub trigger: Option<Event>,
    /// The triggering process's entity id, when known.
    pub entity_id: Option<u64>,
    /// The processes: ancestors (root first), the trigger, then descendants by depth.
    pub processes: Vec<StoryProcess>,
    /// Their events, ordered by time (then id).
    pub events: Vec<StoryEvent>,
    /// Other alerts on the story's processes.
    pub related_alerts: Vec<AlertRecord>,
    /// Response actions recorded against this alert.
    pub actions: Vec<ActionRecord>,
    /// A limit of [`StorylineOptions`] cut the story short.
    pub truncated: bool,
}

pub(crate) const EVENT_COLS: &str = "id, time, partial, body";

/// Decodes a row selected with [`EVENT_COLS`].
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    let id: i64 = row.get(0)?;
    let time: i64 = row.get(1)?;
    let partial: bool = row.get(2)?;
    let body = row.get_ref(3)?.as_blob()?;
    Ok(codec::decode_event(id as u64, time as u64, partial, body).map_err(|e| StoreError::Corrupt { table: "events", id: id as u64, problem: e.0 }))
}

fn collect_events(conn: &Pooled<'_>, sql: &str, params: impl rusqlite::Params, what: &str) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(conn.err(what))?;
    let mut rows = stmt.query(params).map_err(conn.err(what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(conn.err(what))? {
        out.push(event_from_row(row).map_err(conn.err(what))??);
    }
    Ok(out)
}

fn range(since: Option<u64>, until: Option<u64>) -> (i64, i64) {
    (since.map_or(i64::MIN, |s| s.min(i64::MAX as u64) as i64), until.map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64))
}

fn limit(n: usize) -> i64 {
    n.min(i64::MAX as usize) as i64
}

/// Events with id greater than `after`, lowest id first, at most `max`.
pub(crate) fn events_after(conn: &Pooled<'_>, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
    let after = after.min(i64::MAX as u64) as i64;
    collect_events(conn, &format!("SELECT {EVENT_COLS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"), params![after, limit(max)], "reading events by id")
}

pub(crate) fn timeline(conn: &Pooled<'_>, key: &TimelineKey, since: Option<u64>, until: Option<u64>, max: usize) -> Result<Vec<Event>, StoreError> {
    let (lo, hi) = range(since, until);
    let what = "reading a timeline";
    match key {
        TimelineKey::Pid(pid) => collect_events(
            conn,
            &format!("SELECT {EVENT_COLS} FROM events INDEXED BY events_pid WHERE pid = ?1 AND time BETWEEN ?2 AND ?3 ORDER BY time, id LIMIT ?4"),
            params![pid, lo, hi, limit(max)],
            what,
        ),
        TimelineKey::Entity(e) => collect_events(
            conn,
            &format!("SELECT {EVENT_COLS} FROM events INDEXED BY events_entity WHERE entity_id = ?1 AND time BETWEEN ?2 AND ?3 ORDER BY time, id LIMIT ?4"),
            params![*e as i64, lo, hi, limit(max)],
            what,
        ),
        TimelineKey::Path(p) => collect_events(
            conn,
            &format!("SELECT {EVENT_COLS} FROM events WHERE (path = ?1 OR old_path = ?1) AND time BETWEEN ?2 AND ?3 ORDER BY time, id LIMIT ?4"),
            params![p, lo, hi, limit(max)],
            what,
        ),
    }
}

/// Escapes LIKE's wildcards so the needle matches literally.
fn like_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

pub(crate) fn search_command_line(conn: &Pooled<'_>, needle: &str, since: Option<u64>, until: Option<u64>, max: usize) -> Result<Vec<Event>, StoreError> {
    let (lo, hi) = range(since, until);
    // Newest first. LIKE folds ASCII case. When the range covers much of the
    // store, walk the table backwards by id (ids follow time) rather than the
    // time index: reading the table in order is about twice as fast as
    // hopping from index entries to rows. A narrow range uses the index.
    // The plans are pinned (NOT INDEXED / INDEXED BY): with ANALYZE
    // statistics SQLite may prefer the exec-only index and sort, which never
    // stops early at `limit`.
    let (oldest, newest): (Option<i64>, Option<i64>) = conn
        .query_row("SELECT (SELECT min(time) FROM events), (SELECT max(time) FROM events)", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(conn.err("searching command lines"))?;
    let broad = match (oldest, newest) {
        (Some(o), Some(n)) if n > o => {
            let covered = (hi.min(n) as i128 - lo.max(o) as i128).max(0);
            covered * 4 > (n as i128 - o as i128)
        }
        _ => true,
    };
    let sql = if broad {
        format!(
            "SELECT {EVENT_COLS} FROM events NOT INDEXED WHERE kind = 1 AND command_line LIKE ?1 ESCAPE '\\' AND time BETWEEN ?2 AND ?3 ORDER BY id DESC LIMIT ?4"
        )
    } else {
        format!(
            "SELECT {EVENT_COLS} FROM events INDEXED BY events_time WHERE kind = 1 AND command_line LIKE ?1 ESCAPE '\\' AND time BETWEEN ?2 AND ?3 ORDER BY time DESC, id DESC LIMIT ?4"
        )
    };
    collect_events(conn, &sql, params![like_pattern(needle), lo, hi, limit(max)], "searching command lines")
}

fn alert_from_row(row: &Row<'_>) -> rusqlite::Result<Result<AlertRecord, StoreError>> {
    let id = row.get::<_, i64>(0)? as u64;
    let corrupt = |problem: String| StoreError::Corrupt { table: "alerts", id, problem };
    let severity: String = row.get(4)?;
    let severity = match severity.parse::<Severity>() {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(e.to_string()))),
    };
    let pack_id: Option<String> = row.get(6)?;
    let pack = pack_id.map(|id| -> rusqlite::Result<PackRef> {
        Ok(PackRef { id, version: row.get::<_, Option<String>>(7)?.unwrap_or_default(), signer: row.get::<_, Option<String>>(8)?.unwrap_or_default() })
    });
    let pack = pack.transpose()?;
    let parse = |i: usize| -> rusqlite::Result<Result<serde_json::Value, String>> {
        let s: String = row.get(i)?;
        Ok(serde_json::from_str(&s).map_err(|e| format!("column {i} is not JSON: {e}")))
    };
    let (event_ids, techniques, ecs) = match (parse(9)?, parse(10)?, parse(15)?) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Ok(Err(corrupt(e))),
    };
    let event_ids: Vec<u64> = serde_json::from_value(event_ids).unwrap_or_default();
    let techniques: Vec<String> = serde_json::from_value(techniques).unwrap_or_default();
    Ok(Ok(AlertRecord {
        id,
        time: row.get::<_, i64>(1)? as u64,
        rule_id: row.get(2)?,
        rule_name: row.get(3)?,
        severity,
        plugin: row.get(5)?,
        pack,
        event_ids,
        techniques,
        message: row.get(11)?,
        entity_id: row.get::<_, Option<i64>>(12)?.map(|v| v as u64),
        pid: row.get::<_, Option<i64>>(13)?.map(|v| v as u32),
        ecs,
        incident_id: row.get::<_, Option<i64>>(16)?.map(|v| v as u64),
    }))
}

const ALERT_COLS: &str =
    "id, time, rule_id, rule_name, severity, plugin, pack_id, pack_version, signer, event_ids, techniques, message, entity_id, pid, score, ecs, incident_id";

fn collect_alerts(conn: &Pooled<'_>, sql: &str, params: impl rusqlite::Params) -> Result<Vec<AlertRecord>, StoreError> {
    let what = "reading alerts";
    let mut stmt = conn.prepare_cached(sql).map_err(conn.err(what))?;
    let mut rows = stmt.query(params).map_err(conn.err(what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(conn.err(what))? {
        out.push(alert_from_row(row).map_err(conn.err(what))??);
    }
    Ok(out)
}

pub(crate) fn alert(conn: &Pooled<'_>, id: u64) -> Result<Option<AlertRecord>, StoreError> {
    Ok(collect_alerts(conn, &format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?1"), [id as i64])?.pop())
}

/// The alerts of one incident, oldest first, at most `max`.
pub(crate) fn incident_alerts(conn: &Pooled<'_>, incident: u64, max: usize) -> Result<Vec<AlertRecord>, StoreError> {
    collect_alerts(conn, &format!("SELECT {ALERT_COLS} FROM alerts WHERE incident_id = ?1 ORDER BY time, id LIMIT ?2"), params![incident as i64, limit(max)])
}

pub(crate) fn alerts(conn: &Pooled<'_>, since: Option<u64>, until: Option<u64>, max: usize) -> Result<Vec<AlertRecord>, StoreError> {
    let (lo, hi) = range(since, until);
    collect_alerts(
        conn,
        &format!("SELECT {ALERT_COLS} FROM alerts WHERE time BETWEEN ?1 AND ?2 ORDER BY time DESC, id DESC LIMIT ?3"),
        params![lo, hi, limit(max)],
    )
}

fn action_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ActionRecord, StoreError>> {
    let id = row.get::<_, i64>(0)? as u64;
    let corrupt = |problem: String| StoreError::Corrupt { table: "actions", id, problem };
    let decision: String = row.get(5)?;
    let decision = match decision.parse::<Decision>() {
        Ok(d) => d,
        Err(e) => return Ok(Err(corrupt(e.to_string()))),
    };
    let detail: String = row.get(9)?;
    let detail = match serde_json::from_str(&detail) {
        Ok(d) => d,
        Err(e) => return Ok(Err(corrupt(format!("detail is not JSON: {e}")))),
    };
    Ok(Ok(ActionRecord {
        id,
        time: row.get::<_, i64>(1)? as u64,
        requester: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        decision,
        outcome: row.get(6)?,
        reason: row.get(7)?,
        alert_id: row.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        detail,
    }))
}

const ACTION_COLS: &str = "id, time, requester, action, target, decision, outcome, reason, alert_id, detail";

pub(crate) fn actions(conn: &Pooled<'_>, sql_where: &str, params: impl rusqlite::Params) -> Result<Vec<ActionRecord>, StoreError> {
    let what = "reading actions";
    let mut stmt = conn.prepare_cached(&format!("SELECT {ACTION_COLS} FROM actions WHERE {sql_where}")).map_err(conn.err(what))?;
    let mut rows = stmt.query(params).map_err(conn.err(what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(conn.err(what))? {
        out.push(action_from_row(row).map_err(conn.err(what))??);
    }
    Ok(out)
}

/// The story of one alert. Runs inside one read transaction, so every part
/// comes from the same snapshot even while the writer commits.
pub(crate) fn storyline(conn: &Pooled<'_>, alert_id: u64, opts: &StorylineOptions) -> Result<Storyline, StoreError> {
    conn.execute_batch("BEGIN").map_err(conn.err("starting a read transaction"))?;
    let result = storyline_in_snapshot(conn, alert_id, opts);
    let _ = conn.execute_batch("COMMIT");
    result
}

fn storyline_in_snapshot(conn: &Pooled<'_>, alert_id: u64, opts: &StorylineOptions) -> Result<Storyline, StoreError> {
    let what = "building a storyline";
    let alert = alert(conn, alert_id)?.ok_or(StoreError::NoSuchAlert(alert_id))?;
    let (lo, hi) = range(opts.since, opts.until);

    // The trigger: the first event the finding names, as stored; else the
    // copy inside the alert's ECS document.
    let mut trigger = None;
    if let Some(&first) = alert.event_ids.first() {
        trigger = collect_events(conn, &format!("SELECT {EVENT_COLS} FROM events WHERE id = ?1"), [first as i64], what)?.pop();
    }
    if trigger.is_none() && alert.ecs.pointer("/process").is_some() {
        let mut doc = alert.ecs.clone();
        // Rebuild the event part: the alert's document is the event's, overlaid.
        if let Some(ev) = doc.get_mut("event").and_then(|e| e.as_object_mut()) {
            ev.insert("kind".into(), "event".into());
            ev.insert("id".into(), alert.event_ids.first().map(|i| i.to_string()).unwrap_or_default().into());
        }
        trigger = edr_event::ecs::event_from_ecs(&doc).ok();
    }
    let entity = trigger.as_ref().and_then(|t| t.entity_id()).filter(|&e| e != 0).or(alert.entity_id);

    let mut processes: Vec<StoryProcess> = Vec::new();
    let mut truncated = false;
    if let Some(root) = entity {
        let execs_of = |e: u64| {
            collect_events(
                conn,
                &format!("SELECT {EVENT_COLS} FROM events INDEXED BY events_exec WHERE entity_id = ?1 AND kind = 1 ORDER BY time, id"),
                [e as i64],
                what,
            )
        };
        let parent_of = |execs: &[Event]| {
            execs.iter().find_map(|e| match &e.body {
                EventBody::ProcessExec(x) if x.parent_entity_id != 0 => Some(x.parent_entity_id),
                _ => None,
            })
        };

        // Ancestors: a recursive CTE up parent_entity_id, through exec events.
        let mut up: Vec<(u64, i32)> = Vec::new();
        {
            let mut stmt = conn
                .prepare_cached(
                    "WITH RECURSIVE up(entity, depth) AS (
                         SELECT ?1, 0
                         UNION
                         SELECT e.parent_entity_id, up.depth + 1
                         FROM up JOIN events e INDEXED BY events_exec ON e.entity_id = up.entity AND e.kind = 1
                         WHERE e.parent_entity_id IS NOT NULL AND up.depth < ?2
                     )
                     SELECT entity, min(depth) AS d FROM up WHERE depth > 0 GROUP BY entity ORDER BY d DESC",
                )
                .map_err(conn.err(what))?;
            let rows =
                stmt.query_map(params![root as i64, opts.max_depth], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i32>(1)?))).map_err(conn.err(what))?;
            for r in rows {
                up.push(r.map_err(conn.err(what))?);
            }
        }
        for (e, d) in up {
            let execs = execs_of(e)?;
            processes.push(StoryProcess { entity_id: e, parent_entity_id: parent_of(&execs), role: Role::Ancestor, depth: -d, execs });
        }
        let execs = execs_of(root)?;
        let parent = parent_of(&execs).or_else(|| match trigger.as_ref().map(|t| &t.body) {
            Some(EventBody::ProcessExec(x)) if x.parent_entity_id != 0 => Some(x.parent_entity_id),
            _ => None,
        });
        processes.push(StoryProcess { entity_id: root, parent_entity_id: parent, role: Role::Trigger, depth: 0, execs });

        // Descendants: a recursive CTE down parent_entity_id.
        let mut down: Vec<(u64, i32)> = Vec::new();
        {
            let mut stmt = conn
                .prepare_cached(
                    "WITH RECURSIVE down(entity, depth) AS (
                         SELECT ?1, 0
                         UNION
                         SELECT e.entity_id, down.depth + 1
                         FROM down JOIN events e INDEXED BY events_parent ON e.parent_entity_id = down.entity AND e.kind = 1
                         WHERE down.depth < ?2
                     )
                     SELECT entity, min(depth) AS d FROM down WHERE depth > 0 AND entity <> ?1
                     GROUP BY entity ORDER BY d, entity LIMIT ?3",
                )
                .map_err(conn.err(what))?;
            let rows = stmt
                .query_map(params![root as i64, opts.max_depth, limit(opts.max_processes) + 1], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i32>(1)?)))
                .map_err(conn.err(what))?;
            for r in rows {
                down.push(r.map_err(conn.err(what))?);
            }
        }
        if down.len() > opts.max_processes {
            down.truncate(opts.max_processes);
            truncated = true;
        }
        for (e, d) in down {
            let execs = execs_of(e)?;
            processes.push(StoryProcess { entity_id: e, parent_entity_id: parent_of(&execs), role: Role::Descendant, depth: d, execs });
        }
    }

    // Activity: for each process, the events nearest the alert's time.
    let pivot = alert.time.min(i64::MAX as u64) as i64;
    let per = limit(opts.max_events) + 1;
    let mut events: Vec<StoryEvent> = Vec::new();
    let mut seen: HashMap<u64, ()> = HashMap::new();
    for p in &processes {
        if p.role == Role::Ancestor && !opts.ancestor_activity {
            // Their execs are already loaded; querying by entity and kind
            // would walk a busy service's whole activity in the entity index.
            for event in p.execs.iter().filter(|e| (lo..=hi).contains(&(e.time as i64))) {
                if seen.insert(event.id, ()).is_none() {
                    events.push(StoryEvent { role: p.role, depth: p.depth, event: event.clone() });
                }
            }
            continue;
        }
        let before = collect_events(
            conn,
            &format!(
                "SELECT {EVENT_COLS} FROM events INDEXED BY events_entity WHERE entity_id = ?1 AND time BETWEEN ?2 AND ?3 AND time <= ?4 ORDER BY time DESC, id DESC LIMIT ?5"
            ),
            params![p.entity_id as i64, lo, hi, pivot, per],
            what,
        )?;
        let after = collect_events(
            conn,
            &format!(
                "SELECT {EVENT_COLS} FROM events INDEXED BY events_entity WHERE entity_id = ?1 AND time BETWEEN ?2 AND ?3 AND time > ?4 ORDER BY time, id LIMIT ?5"
            ),
            params![p.entity_id as i64, lo, hi, pivot, per],
            what,
        )?;
        for event in before.into_iter().chain(after) {
            if seen.insert(event.id, ()).is_none() {
                events.push(StoryEvent { role: p.role, depth: p.depth, event });
            }
        }
    }
    if events.len() > opts.max_events {
        events.sort_by_key(|e| (e.event.time as i64 - pivot).unsigned_abs());
        events.truncate(opts.max_events);
        truncated = true;
    }
    events.sort_by_key(|e| (e.event.time, e.event.id));

    let mut related_alerts = Vec::new();
    for p in &processes {
        for a in collect_alerts(
            conn,
            &format!("SELECT {ALERT_COLS} FROM alerts WHERE entity_id = ?1 AND id <> ?2 ORDER BY time LIMIT 100"),
            params![p.entity_id as i64, alert_id as i64],
        )? {
            related_alerts.push(a);
        }
    }
    related_alerts.sort_by_key(|a| (a.time, a.id));
    let actions = actions(conn, "alert_id = ?1 ORDER BY time, id", [alert_id as i64])?;
    Ok(Storyline { alert, trigger, entity_id: entity, processes, events, related_alerts, actions, truncated })
}

/// Writes events in `[since, until]` as ECS JSON lines, oldest first, in
/// pages (each its own short read, so a long export never pins the WAL).
pub(crate) fn export(pool: &crate::read::ReadPool, since: Option<u64>, until: Option<u64>, out: &mut dyn Write) -> Result<u64, StoreError> {
    const PAGE: i64 = 10_000;
    let (lo, hi) = range(since, until);
    let ctx = edr_event::ecs::EcsContext::default();
    let mut last: (i64, i64) = (lo, i64::MIN);
    let mut written = 0u64;
    loop {
        let conn = pool.get()?;
        let page = collect_events(
            &conn,
            &format!(
                "SELECT {EVENT_COLS} FROM events INDEXED BY events_time WHERE time BETWEEN ?1 AND ?2 AND (time > ?3 OR (time = ?3 AND id > ?4)) ORDER BY time, id LIMIT ?5"
            ),
            params![lo, hi, last.0, last.1, PAGE],
            "exporting events",
        )?;
        drop(conn);
        let n = page.len();
        for e in &page {
            let io = |source| StoreError::Io { what: format!("writing exported event {}", e.id), source };
            serde_json::to_writer(&mut *out, &edr_event::ecs::event_to_ecs(e, &ctx)).map_err(|err| io(std::io::Error::other(err)))?;
            out.write_all(b"\n").map_err(io)?;
            written += 1;
        }
        match page.last() {
            Some(e) if n as i64 == PAGE => last = (e.time as i64, e.id as i64),
            _ => break,
        }
    }
    out.flush().map_err(|source| StoreError::Io { what: "flushing the export".into(), source })?;
    Ok(written)
}
