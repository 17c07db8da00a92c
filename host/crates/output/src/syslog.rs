//! Syslog: one RFC 5424 message per alert, over UDP (RFC 5426), TCP with
//! octet-counting framing (RFC 6587 §3.4.1), or a local Unix socket such as
//! `/dev/log`.
//!
//! # Message
//!
//! ```text
//! <PRI>1 2024-05-01T12:00:00.123456Z web-1 edr 4242 alert [edr@32473 alert_id="17" rule_id="edr.revshell.dev-tcp" severity="73"] BOM{"@timestamp":...}
//! ```
//!
//! * PRI = facility × 8 + severity, the severity mapped from ECS
//!   `event.severity` (0-100) as below.
//! * TIMESTAMP: when the output formatted the message, UTC, microseconds.
//! * HOSTNAME: the alert's `hostname`, else the one given to
//!   [`build`](crate::build) (characters outside printable ASCII become `_`);
//!   APP-NAME: `app_name`; PROCID: the agent's pid; MSGID: `alert`.
//! * STRUCTURED-DATA: one element `edr@32473`. 32473 is the private
//!   enterprise number IANA reserves for documentation and examples (RFC
//!   5612); an organisation with its own number can change it here.
//!   `alert_id`, `rule_id` and `severity` (the ECS number) let a receiver
//!   route and deduplicate without parsing the JSON; values escape `"`, `\`
//!   and `]` with a backslash (RFC 5424 §6.3.3). A datagram that had to be
//!   cut also carries `original_bytes="<n>"`.
//! * MSG: the ECS JSON document, UTF-8. RFC 5424 §6.4 says a UTF-8 MSG MUST
//!   start with the byte order mark, so it does by default (`bom = true`);
//!   set `bom = false` for receivers that would keep the BOM in the JSON.
//!
//! The header is written here rather than with the `syslog` crate: it is a
//! dozen lines, and that crate's 5424 formatter neither escapes
//! STRUCTURED-DATA values nor offers octet-counting framing or a
//! non-blocking hand-off.
//!
//! # Severity mapping (ECS `event.severity` → syslog severity)
//!
//! | ECS     | syslog            | Elastic bucket |
//! |---------|-------------------|----------------|
//! | 90-100  | 2 Critical        | critical (99)  |
//! | 70-89   | 3 Error           | high (73)      |
//! | 40-69   | 4 Warning         | medium (47)    |
//! | 20-39   | 5 Notice          | low (21)       |
//! | 0-19    | 6 Informational   | informational  |
//!
//! Emergency (0) and Alert (1) are never used: classic syslog daemons
//! broadcast `*.emerg` to every terminal, and neither describes a detection
//! on one host.
//!
//! # Delivery
//!
//! `send` formats the message and puts it in a bounded in-memory queue
//! (`queue`, default 10 000): the pipeline never waits for a socket, not even
//! for a `/dev/log` whose daemon is stuck. A thread writes the queue out.
//! Syslog is best effort: TCP and Unix sockets reconnect with backoff and
//! retry the message being written (a message the peer took just before
//! the connection broke can be lost or, rarely, sent twice: syslog has no
//! acknowledgements); a UDP datagram that fails to send is counted as
//! `failed`. Alerts refused while the queue is full, and those still queued
//! at shutdown, are counted as `dropped`. Alerts that must arrive belong in
//! the webhook or NATS outputs, which spool to disk.
//!
//! UDP and Unix socket messages are cut to `max_datagram_bytes` (default 8192:
//! rsyslog's default maximum message size, and within the 65 507-byte UDP
//! limit; RFC 5426 only guarantees 480 and recommends receivers take 2048).
//! A cut JSON document is no longer valid JSON: such messages carry
//! `original_bytes` and are counted in `truncated`. TCP sends whole
//! messages.
//!
//! A Unix socket path is tried as a datagram socket first (what `/dev/log`
//! is), then as a stream socket, where each message ends with a NUL byte as
//! glibc's `syslog(3)` does.

use crate::util::{rfc3339, Backoff, Control, Worker};
use crate::{check_ms, AlertOutput, OutgoingAlert, OutputError, OutputStatus, SharedCounters};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Deserialize;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Private enterprise number of the structured-data element: 32473 is
/// reserved by IANA for documentation (RFC 5612).
const ENTERPRISE_NUMBER: u32 = 32473;
/// How long `shutdown` waits, past its deadline, for a write in flight.
const JOIN_GRACE: Duration = Duration::from_secs(1);
/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Syslog facility, by its usual name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Facility {
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    /// The facility's number (`auth` = 4, `authpriv` = 10, `local0` = 16).
    pub fn code(self) -> u8 {
        match self {
            Facility::User => 1,
            Facility::Mail => 2,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Syslog => 5,
            Facility::Lpr => 6,
            Facility::News => 7,
            Facility::Uucp => 8,
            Facility::Cron => 9,
            Facility::Authpriv => 10,
            Facility::Ftp => 11,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

/// Syslog severity (0-7) for an ECS `event.severity` (0-100); see the module
/// documentation for the table.
pub fn syslog_severity(ecs: u8) -> u8 {
    match ecs {
        90.. => 2,
        70..=89 => 3,
        40..=69 => 4,
        20..=39 => 5,
        _ => 6,
    }
}

/// `[syslog]`: send alerts to a syslog receiver (RFC 5424).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// Names this output in status and logs; needed only to tell several
    /// syslog outputs apart. Default `syslog`.
    pub name: Option<String>,
    /// `udp://host:port`, `tcp://host:port` (octet-counting framing), or
    /// `unix:///dev/log` (a local socket: datagram, else stream). IPv6 hosts
    /// in brackets: `udp://[::1]:514`. Default `unix:///dev/log`.
    pub address: String,
    /// Facility name: `auth`, `authpriv`, `daemon`, `user`, `local0` to
    /// `local7`, ... Default `authpriv`: alerts are security messages and
    /// quote command lines that may hold secrets, and local daemons write
    /// `authpriv` to a file only root can read (`/var/log/auth.log` on
    /// Debian, `/var/log/secure` on RHEL).
    pub facility: Facility,
    /// APP-NAME field: 1 to 48 printable ASCII characters. Default `edr`.
    pub app_name: String,
    /// Start MSG with the UTF-8 byte order mark, as RFC 5424 §6.4 requires
    /// for UTF-8 text. Default true; false for receivers that keep the BOM
    /// as part of the JSON.
    pub bom: bool,
    /// UDP and Unix socket messages are cut to this many bytes (480 to
    /// 65507). Default 8192, rsyslog's default maximum message size. TCP
    /// sends whole messages.
    pub max_datagram_bytes: usize,
    /// Messages held in memory while the receiver is slow or unreachable;
    /// beyond, alerts are dropped (and counted). Default 10000.
    pub queue: usize,
    /// Limit for connecting and for one write, in milliseconds. Default 5000.
    pub timeout_ms: u64,
    /// First reconnect delay, in milliseconds; doubles (with jitter) up to
    /// `retry_max_ms`. Default 500.
    pub retry_initial_ms: u64,
    /// Longest reconnect delay, in milliseconds. Default 30000.
    pub retry_max_ms: u64,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            name: None,
            address: "unix:///dev/log".into(),
            facility: Facility::Authpriv,
            app_name: "edr".into(),
            bom: true,
            max_datagram_bytes: 8192,
            queue: 10_000,
            timeout_ms: 5_000,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

/// Where a syslog output sends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Udp(String, u16),
    Tcp(String, u16),
    Unix(PathBuf),
}

impl Target {
    fn parse(address: &str) -> Result<Target, String> {
        let net = |rest: &str, scheme: &str| -> Result<(String, u16), String> {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{address:?} has no port: use {scheme}://host:port, e.g. {scheme}://{rest}:514"))?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            if host.is_empty() || host.contains(['/', '[', ']', ' ']) {
                return Err(format!("{address:?}: {host:?} is not a host name or address"));
            }
            if host.contains(':') && !rest.starts_with('[') {
                return Err(format!("{address:?}: write IPv6 addresses in brackets, e.g. {scheme}://[::1]:514"));
            }
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{address:?}: {port:?} is not a port (1-65535)"))?;
            Ok((host.to_string(), port))
        };
        if let Some(rest) = address.strip_prefix("udp://") {
            let (h, p) = net(rest, "udp")?;
            Ok(Target::Udp(h, p))
        } else if let Some(rest) = address.strip_prefix("tcp://") {
            let (h, p) = net(rest, "tcp")?;
            Ok(Target::Tcp(h, p))
        } else if let Some(path) = address.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("{address:?}: the socket path must be absolute, e.g. unix:///dev/log"));
            }
            Ok(Target::Unix(PathBuf::from(path)))
        } else {
            Err(format!("{address:?}: use udp://host:port, tcp://host:port or unix:///path (e.g. unix:///dev/log)"))
        }
    }

    /// UDP, or a Unix socket, which is a datagram socket in practice
    /// (`/dev/log`); a Unix stream socket gets the same size limit.
    fn is_datagram(&self) -> bool {
        matches!(self, Target::Udp(..) | Target::Unix(..))
    }
}

impl SyslogConfig {
    /// The output's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("syslog")
    }

    /// Checks every value; `key` is this table's key (`syslog`).
    pub fn validate(&self, key: &str) -> Result<(), OutputError> {
        Target::parse(&self.address).map_err(|m| OutputError::config(format!("{key}.address"), m))?;
        if self.app_name.is_empty() || self.app_name.len() > 48 || !self.app_name.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(OutputError::config(
                format!("{key}.app_name"),
                format!("{:?}: use 1 to 48 printable ASCII characters without spaces (RFC 5424 APP-NAME)", self.app_name),
            ));
        }
        if !(480..=65_507).contains(&self.max_datagram_bytes) {
            return Err(OutputError::config(
                format!("{key}.max_datagram_bytes"),
                format!("{} is out of range: use 480 (RFC 5426's minimum) to 65507 (the UDP maximum)", self.max_datagram_bytes),
            ));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(OutputError::config(format!("{key}.queue"), format!("{} is out of range: use 1 to 1000000", self.queue)));
        }
        check_ms(key, "timeout_ms", self.timeout_ms, 10, 300_000)?;
        check_ms(key, "retry_initial_ms", self.retry_initial_ms, 1, 3_600_000)?;
        check_ms(key, "retry_max_ms", self.retry_max_ms, self.retry_initial_ms, 86_400_000)?;
        Ok(())
    }
}

/// Formats RFC 5424 messages for one output.
#[derive(Debug, Clone)]
struct Formatter {
    facility: u8,
    hostname: String,
    app_name: String,
    procid: u32,
    bom: bool,
    /// Datagram size limit, when the transport is datagram only.
    max_datagram: Option<usize>,
}

impl Formatter {
    /// The message, and whether it was cut.
    fn format(&self, alert: &OutgoingAlert<'_>, now: SystemTime) -> (Vec<u8>, bool) {
        let pri = self.facility * 8 + syslog_severity(alert.severity);
        let own;
        let hostname = if alert.hostname.is_empty() {
            &self.hostname
        } else {
            own = header_hostname(alert.hostname);
            &own
        };
        let head = |extra: &str| {
            format!(
                "<{pri}>1 {} {} {} {} alert [edr@{ENTERPRISE_NUMBER} alert_id=\"{}\" rule_id=\"{}\" severity=\"{}\"{extra}] ",
                rfc3339(now),
                hostname,
                self.app_name,
                self.procid,
                alert.id,
                sd_escape(alert.rule_id),
                alert.severity.min(100),
            )
        };
        let bom: &[u8] = if self.bom { BOM } else { b"" };
        let json = alert.json.as_bytes();
        let mut header = head("");
        let mut cut = false;
        let mut body_len = json.len();
        if let Some(max) = self.max_datagram {
            if header.len() + bom.len() + json.len() > max {
                cut = true;
                header = head(&format!(" original_bytes=\"{}\"", json.len()));
                let room = max.saturating_sub(header.len() + bom.len());
                body_len = floor_char_boundary(alert.json, room);
            }
        }
        let mut msg = Vec::with_capacity(header.len() + bom.len() + body_len);
        msg.extend_from_slice(header.as_bytes());
        msg.extend_from_slice(bom);
        msg.extend_from_slice(&json[..body_len]);
        if let Some(max) = self.max_datagram {
            msg.truncate(max);
        }
        (msg, cut)
    }
}

/// RFC 5424 §6.3.3: `"`, `\` and `]` are escaped with a backslash.
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The largest index `<= i` on a character boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    (0..=i).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

/// HOSTNAME: printable ASCII, at most 255 characters, `-` when unknown.
fn header_hostname(h: &str) -> String {
    let s: String = h.chars().take(255).map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The syslog output. See the module documentation.
#[derive(Debug)]
pub struct Syslog {
    name: String,
    target: String,
    fmt: Formatter,
    capacity: usize,
    tx: Option<Sender<Vec<u8>>>,
    rx: Receiver<Vec<u8>>,
    control: Arc<Control>,
    counters: SharedCounters,
    worker: Option<Worker>,
    dropping: u64,
}

impl Syslog {
    /// Validates `cfg` and starts the sending thread. Nothing connects here:
    /// the thread resolves and connects, and retries while the receiver is
    /// down. `hostname` goes into the HOSTNAME field.
    pub fn start(cfg: &SyslogConfig, hostname: &str) -> Result<Self, OutputError> {
        cfg.validate("syslog")?;
        let target = Target::parse(&cfg.address).map_err(|m| OutputError::config("syslog.address", m))?;
        let name = cfg.name().to_string();
        let fmt = Formatter {
            facility: cfg.facility.code(),
            hostname: header_hostname(hostname),
            app_name: cfg.app_name.clone(),
            procid: std::process::id(),
            bom: cfg.bom,
            max_datagram: target.is_datagram().then_some(cfg.max_datagram_bytes),
        };
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
        let control = Arc::new(Control::default());
        let counters = SharedCounters::default();
        let sender = SendLoop {
            name: name.clone(),
            target: target.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            backoff: Backoff::new(Duration::from_millis(cfg.retry_initial_ms), Duration::from_millis(cfg.retry_max_ms)),
            conn: None,
            failures: 0,
        };
        let worker = {
            let (rx, control, counters, c2) = (rx.clone(), control.clone(), counters.clone(), counters.clone());
            Worker::spawn(
                &format!("edr-out-{name}"),
                move || sender.run(&rx, &control, &counters),
                move |e| {
                    tracing::error!("{e}");
                    c2.error(e);
                },
            )
            .map_err(|e| OutputError::Start { output: name.clone(), message: format!("cannot start the sending thread: {e}") })?
        };
        Ok(Self { name, target: cfg.address.clone(), fmt, capacity: cfg.queue, tx: Some(tx), rx, control, counters, worker: Some(worker), dropping: 0 })
    }

    fn drop_alert(&mut self, e: OutputError) -> Result<(), OutputError> {
        {
            let mut c = self.counters.lock();
            c.dropped += 1;
            c.last_error = Some((SystemTime::now(), e.to_string()));
        }
        if self.dropping == 0 {
            tracing::error!(output = %self.name, "{e}; further drops are counted (status `dropped`) and summed up in the log once alerts are accepted again");
        }
        self.dropping += 1;
        Err(e)
    }
}

impl AlertOutput for Syslog {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, alert: &OutgoingAlert<'_>) -> Result<(), OutputError> {
        let Some(tx) = &self.tx else {
            return self.drop_alert(OutputError::ShutDown { output: self.name.clone(), id: alert.id });
        };
        let (msg, cut) = self.fmt.format(alert, SystemTime::now());
        match tx.try_send(msg) {
            Ok(()) => {
                if cut {
                    let first = {
                        let mut c = self.counters.lock();
                        c.truncated += 1;
                        c.truncated == 1
                    };
                    let log = format!(
                        "{}: alert {} ({} bytes) cut to max_datagram_bytes; its JSON is incomplete at the receiver",
                        self.name,
                        alert.id,
                        alert.json.len()
                    );
                    if first {
                        tracing::warn!(output = %self.name, "{log} (further cuts are counted in status `truncated`)");
                    } else {
                        tracing::debug!(output = %self.name, "{log}");
                    }
                }
                if self.dropping > 0 {
                    tracing::warn!(output = %self.name, "{}: queue accepts alerts again; {} alerts were dropped before this one", self.name, self.dropping);
                    self.dropping = 0;
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => self.drop_alert(OutputError::QueueFull { output: self.name.clone(), id: alert.id, capacity: self.capacity }),
            Err(TrySendError::Disconnected(_)) => self.drop_alert(OutputError::ShutDown { output: self.name.clone(), id: alert.id }),
        }
    }

    fn status(&self) -> OutputStatus {
        self.counters.status(&self.name, "syslog", &self.target, || (self.rx.len() as u64, 0))
    }

    fn shutdown(&mut self, deadline: Duration) {
        let Some(tx) = self.tx.take() else { return };
        // The thread drains the queue, then sees the channel closed.
        drop(tx);
        self.control.stop(Instant::now() + deadline);
        if let Some(mut w) = self.worker.take() {
            if !w.join_within(deadline + JOIN_GRACE) {
                tracing::warn!(output = %self.name, "{}: the sending thread is still waiting for the receiver; left to finish on its own", self.name);
            }
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// An open connection to the receiver.
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
}

/// The sending thread's state.
struct SendLoop {
    name: String,
    target: Target,
    timeout: Duration,
    backoff: Backoff,
    conn: Option<Conn>,
    failures: u64,
}

impl SendLoop {
    fn run(mut self, rx: &Receiver<Vec<u8>>, control: &Control, counters: &SharedCounters) {
        loop {
            if control.must_exit() {
                break;
            }
            let msg = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if !self.deliver(&msg, control, counters) {
                counters.lock().dropped += 1;
                break;
            }
        }
        let left = rx.len();
        if left > 0 {
            counters.lock().dropped += left as u64;
            tracing::warn!(output = %self.name, "{}: {left} alerts not sent at shutdown (receiver unreachable)", self.name);
        }
    }

    /// Sends one message, reconnecting as needed. False when stopping
    /// before it could be sent.
    fn deliver(&mut self, msg: &[u8], control: &Control, counters: &SharedCounters) -> bool {
        let mut attempts = 0u32;
        loop {
            if self.conn.is_none() {
                match self.connect() {
                    Ok(c) => {
                        self.conn = Some(c);
                        if self.failures > 0 {
                            tracing::info!(output = %self.name, "{}: connected again after {} failed attempts", self.name, self.failures);
                            self.failures = 0;
                        }
                    }
                    Err(e) => {
                        self.failed_attempt(format!("cannot connect: {e}"), counters);
                        if control.must_exit() {
                            return false;
                        }
                        control.sleep(self.backoff.next_delay());
                        if control.must_exit() {
                            return false;
                        }
                        continue;
                    }
                }
            }
            attempts += 1;
            match self.write(msg) {
                Ok(()) => {
                    self.backoff.reset();
                    let mut c = counters.lock();
                    c.delivered += 1;
                    c.last_delivery = Some(SystemTime::now());
                    return true;
                }
                Err(e) if matches!(self.conn, Some(Conn::Udp(_))) => {
                    // A refused datagram reports an earlier one's ICMP error:
                    // try once more, then give this one up.
                    if attempts < 2 {
                        continue;
                    }
                    let mut c = counters.lock();
                    c.failed += 1;
                    c.last_error = Some((SystemTime::now(), format!("cannot send: {e}")));
                    drop(c);
                    if self.failures == 0 {
                        tracing::warn!(output = %self.name, "{}: cannot send a datagram: {e} (counted in `failed`)", self.name);
                    }
                    return true;
                }
                Err(e) => {
                    self.conn = None;
                    self.failed_attempt(format!("cannot write: {e}"), counters);
                    // The first retry goes straight to a new connection.
                    if attempts > 1 {
                        if control.must_exit() {
                            return false;
                        }
                        control.sleep(self.backoff.next_delay());
                    }
                    if control.must_exit() {
                        return false;
                    }
                }
            }
        }
    }

    fn failed_attempt(&mut self, e: String, counters: &SharedCounters) {
        self.failures += 1;
        {
            let mut c = counters.lock();
            c.retries += 1;
            c.last_error = Some((SystemTime::now(), e.clone()));
        }
        if self.failures == 1 {
            tracing::warn!(output = %self.name, "{} ({}): {e}; retrying with backoff, alerts wait in memory", self.name, describe(&self.target));
        } else {
            tracing::debug!(output = %self.name, "{}: attempt {}: {e}", self.name, self.failures);
        }
    }

    fn connect(&self) -> io::Result<Conn> {
        match &self.target {
            Target::Udp(host, port) => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    let r = UdpSocket::bind(bind).and_then(|s| {
                        s.connect(addr)?;
                        s.set_write_timeout(Some(self.timeout))?;
                        Ok(s)
                    });
                    match r {
                        Ok(s) => return Ok(Conn::Udp(s)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))))
            }
            Target::Tcp(host, port) => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => {
                            s.set_write_timeout(Some(self.timeout))?;
                            s.set_nodelay(true)?;
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))))
            }
            Target::Unix(path) => {
                let dgram = UnixDatagram::unbound().and_then(|s| {
                    s.connect(path)?;
                    s.set_write_timeout(Some(self.timeout))?;
                    Ok(s)
                });
                match dgram {
                    Ok(s) => Ok(Conn::UnixDgram(s)),
                    // A stream socket refuses a datagram connect (EPROTOTYPE).
                    Err(e) if e.raw_os_error() == Some(91) => {
                        let s = UnixStream::connect(path)?;
                        s.set_write_timeout(Some(self.timeout))?;
                        Ok(Conn::UnixStream(s))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn write(&mut self, msg: &[u8]) -> io::Result<()> {
        match self.conn.as_mut() {
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "not connected")),
            Some(Conn::Udp(s)) => s.send(msg).map(drop),
            Some(Conn::UnixDgram(s)) => s.send(msg).map(drop),
            Some(Conn::Tcp(s)) => {
                peer_closed(|b| s.set_nonblocking(b), |buf| s.peek(buf))?;
                let mut frame = Vec::with_capacity(msg.len() + 8);
                frame.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                frame.extend_from_slice(msg);
                s.write_all(&frame)
            }
            Some(Conn::UnixStream(s)) => {
                let mut frame = Vec::with_capacity(msg.len() + 1);
                frame.extend_from_slice(msg);
                frame.push(0);
                s.write_all(&frame)
            }
        }
    }
}

/// Fails when the peer already closed the connection (a receiver that
/// restarted), so the message goes to a new connection instead of into a
/// dead one.
fn peer_closed(set_nonblocking: impl Fn(bool) -> io::Result<()>, peek: impl Fn(&mut [u8]) -> io::Result<usize>) -> io::Result<()> {
    set_nonblocking(true)?;
    let mut b = [0u8; 1];
    let r = peek(&mut b);
    set_nonblocking(false)?;
    match r {
        Ok(0) => Err(io::Error::new(io::ErrorKind::ConnectionReset, "the receiver closed the connection")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

fn describe(t: &Target) -> String {
    match t {
        Target::Udp(h, p) => format!("udp {h}:{p}"),
        Target::Tcp(h, p) => format!("tcp {h}:{p}"),
        Target::Unix(p) => format!("unix {}", p.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(Target::parse("udp://10.0.0.1:514"), Ok(Target::Udp("10.0.0.1".into(), 514)));
        assert_eq!(Target::parse("tcp://[::1]:6514"), Ok(Target::Tcp("::1".into(), 6514)));
        assert_eq!(Target::parse("unix:///dev/log"), Ok(Target::Unix("/dev/log".into())));
        assert!(Target::parse("tcp://logs").unwrap_err().contains("no port"));
        assert!(Target::parse("udp://::1:514").unwrap_err().contains("brackets"));
        assert!(Target::parse("unix://dev/log").unwrap_err().contains("absolute"));
        assert!(Target::parse("http://x:1").unwrap_err().contains("udp://"));
        assert!(Target::parse("udp://x:0").unwrap_err().contains("port"));
    }

    #[test]
    fn severity_table() {
        assert_eq!([0, 1, 19, 20, 21, 39, 40, 47, 69, 70, 73, 89, 90, 99, 100, 255].map(syslog_severity), [6, 6, 6, 5, 5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 2, 2]);
    }

    #[test]
    fn escaping_and_cutting() {
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        let f = Formatter { facility: 10, hostname: "h".into(), app_name: "edr".into(), procid: 1, bom: true, max_datagram: Some(480) };
        let json = format!("{{\"x\":\"{}\"}}", "é".repeat(400));
        let a = OutgoingAlert { id: 1, json: &json, severity: 99, rule_id: "r", hostname: "h" };
        let (msg, cut) = f.format(&a, SystemTime::now());
        assert!(cut);
        assert!(msg.len() <= 480);
        let text = String::from_utf8(msg).expect("cut on a character boundary");
        assert!(text.starts_with("<82>1 "));
        assert!(text.contains(&format!("original_bytes=\"{}\"", json.len())));
    }
}
