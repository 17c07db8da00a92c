//! The API client `edr fleet ...` uses (blocking, ureq).

use serde_json::Value;
use std::path::Path;

/// An API call that failed, with the server's message when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("the server refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The server could not be reached or answered something else.
    #[error("{0}")]
    Transport(String),
}

/// Where the API is and the token to use.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
}

impl Client {
    /// A client for `base` (`http://host:port`) with `token`.
    pub fn new(base: &str, token: &str) -> Self {
        Client { base: base.trim_end_matches('/').to_string(), token: token.trim().to_string() }
    }

    /// A client for the fleet in `dir`: its API URL and its `admin.token`.
    ///
    /// # Errors
    /// When the fleet cannot be read.
    pub fn for_fleet_dir(dir: &Path) -> Result<Self, crate::FleetError> {
        let fleet = crate::Fleet::open(dir)?;
        let token = fleet
            .dir
            .read_limited("admin.token", 4096)?
            .ok_or_else(|| crate::FleetError::File { path: dir.join("admin.token"), problem: "missing: pass --token".into() })?;
        let listen = &fleet.config.http.listen;
        Ok(Client::new(&format!("http://{listen}"), &String::from_utf8_lossy(&token)))
    }

    /// GET `path` as bytes (a download, such as `/api/v1/evidence/HOST/CMD`), with the `x-edr-sha256` header when sent.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub fn get_bytes(&self, path: &str) -> Result<(Vec<u8>, Option<String>), ClientError> {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut resp = agent
            .get(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| ClientError::Transport(format!("cannot reach the management server at {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let sha256 = resp.headers().get("x-edr-sha256").and_then(|v| v.to_str().ok()).map(String::from);
        let bytes = resp.body_mut().with_config().limit(64 << 20).read_to_vec().map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?;
        if status >= 400 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = v["error"]["message"].as_str().map(String::from).unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(ClientError::Refused { status, message });
        }
        Ok((bytes, sha256))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("POST", b) => agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(serde_json::to_vec(b.unwrap_or(&Value::Null)).unwrap_or_default()),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            _ => agent.get(&url).header("authorization", &auth).call(),
        };
        let mut resp = resp.map_err(|e| ClientError::Transport(format!("cannot reach the management server at {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| ClientError::Transport(format!("the server answered {status} with non-JSON: {text:.200}")))?;
        if status >= 400 {
            let message = v["error"]["message"].as_str().unwrap_or(&text).to_string();
            return Err(ClientError::Refused { status, message });
        }
        Ok(v)
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body))
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call("DELETE", path, None)
    }
}

/// `s` percent-encoded for one path segment (everything but `A-Za-z0-9-._~`).
pub fn path_segment(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The API path of saved query `name` (`DELETE` it to delete it).
pub fn saved_query_path(name: &str) -> String {
    format!("/api/v1/queries/{}", path_segment(name))
}

/// `GET /api/v1/queries` as a table: name, who saved it and when, description, then the SQL indented.
pub fn render_saved_queries(v: &Value) -> String {
    let queries = v["queries"].as_array().cloned().unwrap_or_default();
    if queries.is_empty() {
        return "no saved queries (save one with `edr fleet queries save NAME SQL`)\n".into();
    }
    let mut out = String::new();
    for q in &queries {
        let s = |k: &str| q[k].as_str().unwrap_or("").to_string();
        let when = q["saved_at"].as_u64().map(|t| edr_event::time::to_rfc3339(t.saturating_mul(1_000_000_000))).unwrap_or_default();
        out.push_str(&format!("{:?}  saved by {} at {when}", s("name"), s("saved_by")));
        if !s("description").is_empty() {
            out.push_str(&format!("  {}", s("description").replace('\n', " ")));
        }
        out.push('\n');
        for line in s("sql").lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

impl Client {
    /// This client with another base URL and/or token.
    pub fn with_overrides(self, base: Option<&str>, token: Option<&str>) -> Self {
        Client::new(base.unwrap_or(&self.base), token.unwrap_or(&self.token))
    }
}

fn plain(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect()
}

/// The alerts listing's path with its filters (values reduced to `[A-Za-z0-9._-]`).
pub fn alerts_path(host: Option<&str>, state: Option<&str>, limit: usize) -> String {
    let mut p = format!("/api/v1/alerts?limit={limit}");
    if let Some(h) = host {
        p.push_str(&format!("&host={}", plain(h)));
    }
    if let Some(s) = state {
        p.push_str(&format!("&state={}", plain(s)));
    }
    p
}

fn ago(now: u64, t: Option<u64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!("{}s ago", now.saturating_sub(t)),
    }
}

/// `edr fleet hosts` as a table.
pub fn render_hosts(v: &Value) -> String {
    let now = edr_fleet_proto::now_secs();
    let mut out = format!("{:<18} {:<24} {:<10} {:<10} {:<10} {}\n", "HOST", "NAME", "STATE", "LAST SEEN", "AGENT", "PACKS");
    for h in v["hosts"].as_array().into_iter().flatten() {
        let hb = &h["heartbeat"];
        let packs: Vec<String> = hb["packs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}@{}", p["id"].as_str().unwrap_or(""), p["version"].as_str().unwrap_or("")))
            .collect();
        out.push_str(&format!(
            "{:<18} {:<24} {:<10} {:<10} {:<10} {}\n",
            h["host_id"].as_str().unwrap_or(""),
            h["hostname"].as_str().unwrap_or(""),
            h["state"].as_str().unwrap_or(""),
            ago(now, h["last_seen"].as_u64()),
            hb["agent_version"].as_str().unwrap_or("-"),
            packs.join(",")
        ));
    }
    for h in v["hosts"].as_array().into_iter().flatten() {
        let released = &h["heartbeat"]["self_release"];
        if let Some(reason) = released["reason"].as_str() {
            out.push_str(&format!(
                "note: {} released itself from isolation {}: {reason}\n",
                h["host_id"].as_str().unwrap_or(""),
                ago(now, released["time"].as_u64())
            ));
        }
    }
    out
}

/// `edr fleet alerts` as a table.
pub fn render_alerts(v: &Value) -> String {
    let mut out = format!("{:<28} {:<9} {:<13} {:<40} {}\n", "ALERT", "SEVERITY", "STATE", "RULE", "NOTE");
    for a in v["alerts"].as_array().into_iter().flatten() {
        let id = format!("{}:{}", a["host_id"].as_str().unwrap_or(""), a["alert_id"]);
        let by = a["state_by"].as_str().map(|b| format!("{b}: ")).unwrap_or_default();
        out.push_str(&format!(
            "{:<28} {:<9} {:<13} {:<40} {}{}\n",
            id,
            a["severity"].as_str().unwrap_or(""),
            a["state"].as_str().unwrap_or(""),
            a["rule_id"].as_str().unwrap_or(""),
            by,
            a["note"].as_str().unwrap_or("")
        ));
    }
    out
}

/// Signs `command` for `host_id` with the operator key in `key_file` (hex
/// Ed25519 seed, `DIR/keys/command.ed25519`), valid for `ttl_secs`, with no reason.
///
/// # Errors
/// When the key cannot be read or the OS random source fails.
pub fn sign_command(
    key_file: &Path,
    host_id: &str,
    command: edr_fleet_proto::command::Command,
    ttl_secs: u64,
) -> Result<edr_fleet_proto::command::SignedCommand, crate::FleetError> {
    sign_command_with_reason(key_file, host_id, command, "", ttl_secs)
}

/// [`sign_command`] with the operator's reason in the signed body (the
/// host's audit and its response engine's record keep it). The body's
/// version is the lowest its command needs, so older agents still run
/// the commands they know.
///
/// # Errors
/// As [`sign_command`].
pub fn sign_command_with_reason(
    key_file: &Path,
    host_id: &str,
    command: edr_fleet_proto::command::Command,
    reason: &str,
    ttl_secs: u64,
) -> Result<edr_fleet_proto::command::SignedCommand, crate::FleetError> {
    let bad = |problem: String| crate::FleetError::Key { name: key_file.display().to_string(), problem };
    let text = std::fs::read_to_string(key_file).map_err(|e| bad(format!("cannot read the operator's command key: {e}")))?;
    let seed: [u8; 32] = hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("not 32 hex-encoded bytes".into()))?;
    let now = edr_fleet_proto::now_secs();
    let random = |n| edr_fleet_proto::random_hex(n).map_err(|e| bad(format!("random: {e}")));
    let body = edr_fleet_proto::command::CommandBody {
        v: command.min_version(),
        reason: reason.to_string(),
        command_id: random(8)?,
        host_id: host_id.to_string(),
        issued_at: now,
        expires_at: now + ttl_secs.max(1),
        nonce: random(16)?,
        command,
    };
    Ok(edr_fleet_proto::command::sign(&body, &ed25519_dalek::SigningKey::from_bytes(&seed)))
}

/// What one fleet-wide query asks.
#[derive(Debug, Clone)]
pub struct HuntRequest<'a> {
    /// The SELECT.
    pub sql: &'a str,
    /// Rows per host at most.
    pub limit: u32,
    /// The operator's reason (optional for a query).
    pub reason: &'a str,
    /// How long each signed command stays valid.
    pub ttl_secs: u64,
    /// How long the server waits for each host.
    pub timeout_secs: u64,
    /// Queue the query for hosts that do not answer now, for this long (a hunt id comes back).
    pub until_secs: Option<u64>,
}

/// Signs one `query` per host (see [`sign_command_with_reason`]) and
/// builds the body of `POST /api/v1/query`.
///
/// # Errors
/// As [`sign_command`].
pub fn query_request(key_file: &Path, hosts: &[String], q: &HuntRequest<'_>) -> Result<Value, crate::FleetError> {
    let mut commands = Vec::with_capacity(hosts.len());
    for h in hosts {
        let cmd = edr_fleet_proto::command::Command::Query { sql: q.sql.to_string(), limit: q.limit };
        commands.push(serde_json::to_value(sign_command_with_reason(key_file, h, cmd, q.reason, q.ttl_secs)?).unwrap_or_default());
    }
    let mut body = serde_json::json!({"commands": commands, "timeout_secs": q.timeout_secs});
    if let Some(until) = q.until_secs {
        body["until_secs"] = until.into();
    }
    Ok(body)
}

/// A host's line in a hunt: `done`, `no_answer`, `refused: reason`, `failed: error`.
fn hunt_status(h: &Value) -> String {
    let status = h["status"].as_str().unwrap_or("unknown");
    let why = h["output"]["reason"].as_str().or_else(|| h["output"]["error"].as_str());
    match (status, why) {
        ("done", _) | ("no_answer", _) | (_, None) => status.to_string(),
        (s, Some(w)) => format!("{s}: {w}"),
    }
}

/// The answer of `POST /api/v1/query` as one result: `columns` (`host`
/// first, then every column a host returned, in first-seen order), `rows`
/// (each host's rows, its name first, missing columns null) and `hosts`
/// (each host's `status` line as [`hunt_status`] words it, its row count
/// and whether its rows were truncated).
pub fn merge_hunt(answer: &Value) -> Value {
    let mut columns: Vec<String> = vec!["host".into()];
    let mut rows = Vec::new();
    let mut hosts = Vec::new();
    for h in answer["hosts"].as_array().into_iter().flatten() {
        let host = h["host"].as_str().unwrap_or("").to_string();
        let out = &h["output"];
        let mine: Vec<String> = out["columns"].as_array().into_iter().flatten().map(|c| c.as_str().unwrap_or("").to_string()).collect();
        let done = h["status"] == "done";
        if done {
            for c in &mine {
                if !columns[1..].contains(c) {
                    columns.push(c.clone());
                }
            }
        }
        let mut n = 0;
        for row in out["rows"].as_array().into_iter().flatten().filter(|_| done) {
            let cells = row.as_array().cloned().unwrap_or_default();
            let mut full = vec![Value::Null; columns.len()];
            full[0] = Value::String(host.clone());
            for (c, v) in mine.iter().zip(cells) {
                if let Some(i) = columns.iter().skip(1).position(|x| x == c) {
                    full[i + 1] = v;
                }
            }
            rows.push(full);
            n += 1;
        }
        hosts.push(serde_json::json!({"host": host, "status": hunt_status(h), "rows": n, "truncated": out["truncated"] == true}));
    }
    let width = columns.len();
    for r in &mut rows {
        r.resize(width, Value::Null);
    }
    serde_json::json!({"columns": columns, "rows": rows, "hosts": hosts})
}

/// A cell as text: strings as they are, null empty, the rest as JSON.
fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A merged hunt ([`merge_hunt`]) as a table, control characters shown as
/// `?` and cells cut at 80 characters, followed by each host that did not
/// answer with rows and each truncated result.
pub fn render_hunt_table(merged: &Value) -> String {
    let columns: Vec<String> = merged["columns"].as_array().into_iter().flatten().map(cell_text).collect();
    let clean = |s: String| -> String {
        let s: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        if s.chars().count() > 80 {
            s.chars().take(79).collect::<String>() + "…"
        } else {
            s
        }
    };
    let cells: Vec<Vec<String>> =
        merged["rows"].as_array().into_iter().flatten().map(|r| r.as_array().into_iter().flatten().map(|v| clean(cell_text(v))).collect()).collect();
    let widths: Vec<usize> =
        columns.iter().enumerate().map(|(i, c)| cells.iter().filter_map(|r| r.get(i)).map(|s| s.chars().count()).chain([c.len()]).max().unwrap_or(0)).collect();
    let line = |vals: &[String]| vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string() + "\n";
    let mut out = line(&columns);
    out.push_str(&(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n"));
    for r in &cells {
        out.push_str(&line(r));
    }
    out.push_str(&format!("({} rows)\n", cells.len()));
    for h in merged["hosts"].as_array().into_iter().flatten() {
        let host = clean(cell_text(&h["host"]));
        if h["status"] != "done" {
            out.push_str(&format!("host {host}: {}\n", clean(cell_text(&h["status"]))));
        } else if h["truncated"] == true {
            out.push_str(&format!("host {host}: truncated at {} rows; narrow the query, add LIMIT or raise --limit\n", h["rows"]));
        }
    }
    out
}

/// A merged hunt ([`merge_hunt`]) as CSV (RFC 4180: fields with a comma,
/// quote, CR or LF are quoted, quotes doubled). Host statuses are not in it.
pub fn render_hunt_csv(merged: &Value) -> String {
    let field = |v: &Value| {
        let s = cell_text(v);
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let line = |vals: &[Value]| vals.iter().map(field).collect::<Vec<_>>().join(",") + "\r\n";
    let mut out = line(merged["columns"].as_array().map_or(&[][..], Vec::as_slice));
    for r in merged["rows"].as_array().into_iter().flatten() {
        out.push_str(&line(r.as_array().map_or(&[][..], Vec::as_slice)));
    }
    out
}

/// The bytes of a `fetch` result, checked: the base64 content must decode
/// and hash to the sha256 the host reported (and be as long as it said).
///
/// # Errors
/// What does not match, or a result that is not a fetch's.
pub fn fetched_bytes(result: &Value) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use sha2::Digest;
    let out = &result["output"];
    let text = out["content_base64"].as_str().ok_or("the result carries no content (content_base64)")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("the content is not base64: {e}"))?;
    let want = out["sha256"].as_str().ok_or("the result carries no sha256")?;
    let got = hex::encode(sha2::Sha256::digest(&bytes));
    if got != want {
        return Err(format!("sha256 mismatch: the host said {want}, the content hashes to {got}"));
    }
    if out["size"].as_u64() != Some(bytes.len() as u64) {
        return Err(format!("size mismatch: the host said {}, got {} bytes", out["size"], bytes.len()));
    }
    Ok(bytes)
}

/// `edr fleet ps` as a table: pid, parent, user, executable, argv.
pub fn render_processes(result: &Value) -> String {
    let out = &result["output"];
    let mut s = format!("{:>8} {:>8} {:<12} {:<32} {}\n", "PID", "PPID", "USER", "EXE", "ARGV");
    for p in out["processes"].as_array().into_iter().flatten() {
        let user = p["user"].as_str().map(String::from).or_else(|| p["uid"].as_u64().map(|u| u.to_string())).unwrap_or_else(|| "?".into());
        let exe = if p["kernel_thread"] == true { format!("[{}]", p["name"].as_str().unwrap_or("")) } else { p["exe"].as_str().unwrap_or("").to_string() };
        let argv: Vec<&str> = p["argv"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        s.push_str(&format!(
            "{:>8} {:>8} {:<12} {:<32} {}\n",
            p["pid"],
            p["ppid"],
            user,
            exe,
            argv.join(" ").chars().filter(|c| !c.is_control()).collect::<String>()
        ));
    }
    if out["truncated"] == true {
        s.push_str("(truncated: the host lists at most 4000 processes)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fetched_content_is_checked_against_its_hash_and_size() {
        let ok = json!({"output": {"content_base64": "aGVsbG8=", "size": 5, "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}});
        assert_eq!(fetched_bytes(&ok).unwrap(), b"hello");
        let mut bad = ok.clone();
        bad["output"]["content_base64"] = json!("aGVsbG9v");
        assert!(fetched_bytes(&bad).unwrap_err().contains("sha256 mismatch"));
        let mut bad = ok.clone();
        bad["output"]["size"] = json!(6);
        assert!(fetched_bytes(&bad).unwrap_err().contains("size mismatch"));
        let mut bad = ok;
        bad["output"]["content_base64"] = json!("not base64!");
        assert!(fetched_bytes(&bad).unwrap_err().contains("not base64"));
        assert!(fetched_bytes(&json!({"output": {}})).is_err());
    }

    #[test]
    fn hunts_merge_hosts_columns_and_statuses() {
        let answer = serde_json::json!({"hosts": [
            {"host": "h1", "status": "done", "output": {"columns": ["pid", "exe"], "rows": [[1, "/sbin/init"], [2, "a,\"b\"\n\u{1b}[31m"]], "truncated": true}},
            {"host": "h2", "status": "done", "output": {"columns": ["exe", "uid"], "rows": [["/bin/sh", 0]], "truncated": false}},
            {"host": "h3", "status": "refused", "output": {"reason": "replayed"}},
            {"host": "h4", "status": "no_answer", "output": {"reason": "no answer within 5 s"}},
            {"host": "h5", "status": "failed", "output": {"error": "DELETE from events is not allowed"}},
            {"host": "h6", "status": "done", "output": "not an object"},
        ]});
        let m = merge_hunt(&answer);
        assert_eq!(m["columns"], serde_json::json!(["host", "pid", "exe", "uid"]));
        assert_eq!(m["rows"][0], serde_json::json!(["h1", 1, "/sbin/init", null]));
        assert_eq!(m["rows"][2], serde_json::json!(["h2", null, "/bin/sh", 0]));
        assert_eq!(m["rows"].as_array().unwrap().len(), 3);
        let st: Vec<&str> = m["hosts"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
        assert_eq!(st, ["done", "done", "refused: replayed", "no_answer", "failed: DELETE from events is not allowed", "done"]);
        let t = render_hunt_table(&m);
        assert!(t.starts_with("host") && !t.contains('\u{1b}'), "{t}");
        assert!(t.contains("host h3: refused: replayed") && t.contains("host h4: no_answer") && t.contains("host h1: truncated at 2 rows"), "{t}");
        let csv = render_hunt_csv(&m);
        assert!(csv.starts_with("host,pid,exe,uid\r\nh1,1,/sbin/init,\r\n"), "{csv}");
        assert!(csv.contains("h1,2,\"a,\"\"b\"\"\n\u{1b}[31m\","), "{csv}");
        assert_eq!(merge_hunt(&serde_json::json!("garbage"))["rows"], serde_json::json!([]));
    }

    #[test]
    fn processes_render_without_control_characters() {
        let r = json!({"output": {"processes": [{"pid": 7, "ppid": 1, "user": "root", "exe": "/bin/sh", "argv": ["sh", "-c", "echo \u{1b}[31m"]}], "truncated": false}});
        let t = render_processes(&r);
        assert!(t.contains("/bin/sh") && t.contains("root") && !t.contains('\u{1b}'), "{t}");
    }
}
