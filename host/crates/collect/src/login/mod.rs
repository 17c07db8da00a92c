//! Login collector: successful and failed logins with user and source.
//!
//! * The authentication log (`/var/log/auth.log` on Debian/Ubuntu,
//!   `/var/log/secure` on RHEL; the first that exists) is tailed across
//!   rotation and truncation; sshd lines give `Accepted <method> for <user>
//!   from <ip>` (success), `Failed <method> for [invalid user ]<user> from
//!   <ip>` (failure, one per attempt) and `Invalid user <u> from <ip>`
//!   (failure with method `invalid-user`, once per connection, before the
//!   attempts). `pid` is the sshd pid of the line's `sshd[1234]` tag.
//! * wtmp (`USER_PROCESS` records: every login session, console ones too)
//!   and btmp (failed logins) are followed as well, with method `wtmp` /
//!   `btmp`, service `sshd` for `ssh*`/remote `pts` lines and `login`
//!   otherwise. While an auth log is being read, utmp records of remote
//!   (sshd) logins are skipped: the auth log already reported them, with
//!   the method.
//!
//! What it cannot see: a host logging only to the journal (no auth log,
//! e.g. Debian 12 without rsyslog) gives only wtmp/btmp logins, without
//! method; btmp is written only by services that record failures (sshd,
//! login); logins through PAM services that write neither (su, sudo) are
//! not reported. Logs are read every `interval` (500 ms) from where they
//! ended at start: history is not replayed.

pub(crate) mod authlog;
pub(crate) mod tail;
pub(crate) mod utmp;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edr_event::{EventBody, LoginEvent};

use crate::sink::Sink;
use crate::{CollectError, Ctx, LoginConfig, LoginMode};
use tail::{Lines, Tail};

/// Starts the login collector.
pub(crate) fn start(cfg: &LoginConfig, ctx: &Arc<Ctx>, sink: Sink) -> Result<Vec<JoinHandle<()>>, CollectError> {
    if cfg.mode == LoginMode::Off {
        sink.counters.set_mode("off");
        return Ok(Vec::new());
    }
    let auth = cfg.auth_logs.iter().find(|p| p.is_file()).map(|p| Tail::at_end(p));
    let wtmp = cfg.wtmp.as_ref().map(|p| Utmps::new(Tail::at_end(p), true));
    let btmp = cfg.btmp.as_ref().map(|p| Utmps::new(Tail::at_end(p), false));
    let any_utmp = wtmp.iter().chain(btmp.iter()).any(|u| u.tail.is_open());
    if auth.is_none() && !any_utmp && cfg.mode == LoginMode::Tail {
        return Err(CollectError::Unavailable {
            collector: "login",
            mode: "tail".into(),
            reason: format!("none of {} exists", list(&cfg.auth_logs, cfg.wtmp.iter().chain(cfg.btmp.iter()))),
        });
    }
    let mut c = LoginCollector { cfg: cfg.clone(), auth, lines: Lines::default(), wtmp, btmp, sink, last_look: Instant::now() };
    c.set_mode();
    let ctx = ctx.clone();
    crate::process::spawn("login", move || {
        while !ctx.stopping() {
            c.poll();
            ctx.sleep(c.cfg.interval);
        }
    })
}

fn list<'a>(a: &'a [PathBuf], b: impl Iterator<Item = &'a PathBuf>) -> String {
    a.iter().chain(b).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A followed utmp-format file.
struct Utmps {
    tail: Tail,
    pending: Vec<u8>,
    success: bool,
}

impl Utmps {
    fn new(tail: Tail, success: bool) -> Utmps {
        Utmps { tail, pending: Vec::new(), success }
    }

    /// New records since the last call.
    fn read(&mut self) -> Vec<utmp::Utmp> {
        match self.tail.read_new() {
            Ok(b) => self.pending.extend(b),
            Err(e) => tracing::debug!(path = %self.tail.path().display(), "cannot read: {e}"),
        }
        let whole = self.pending.len() / utmp::RECORD * utmp::RECORD;
        let out = self.pending[..whole].chunks(utmp::RECORD).filter_map(utmp::parse).collect();
        self.pending.drain(..whole);
        out
    }
}

struct LoginCollector {
    cfg: LoginConfig,
    auth: Option<Tail>,
    lines: Lines,
    wtmp: Option<Utmps>,
    btmp: Option<Utmps>,
    sink: Sink,
    last_look: Instant,
}

impl LoginCollector {
    fn set_mode(&self) {
        let mut parts = Vec::new();
        if let Some(a) = &self.auth {
            parts.push(a.path().display().to_string());
        }
        for u in self.wtmp.iter().chain(self.btmp.iter()) {
            if u.tail.is_open() {
                parts.push(u.tail.path().display().to_string());
            }
        }
        let mut mode = if parts.is_empty() { "tail (nothing to read yet)".to_string() } else { format!("tail {}", parts.join(" + ")) };
        if self.auth.is_none() {
            let names: Vec<String> = self.cfg.auth_logs.iter().map(|p| p.display().to_string()).collect();
            mode.push_str(&format!(" (degraded: no auth log ({}), failed-login details and methods missing; waiting for it)", names.join(", ")));
        }
        self.sink.counters.set_mode(mode);
    }

    fn poll(&mut self) {
        if self.auth.is_none() && self.last_look.elapsed() >= Duration::from_secs(5) {
            self.last_look = Instant::now();
            if let Some(p) = self.cfg.auth_logs.iter().find(|p| p.is_file()) {
                tracing::info!(path = %p.display(), "login collector: auth log appeared");
                self.auth = Some(Tail::from_start(p));
                self.set_mode();
            }
        }
        if let Some(a) = self.auth.as_mut() {
            match a.read_new() {
                Ok(bytes) => {
                    for line in self.lines.feed(&bytes) {
                        for ev in authlog::parse_line(&line) {
                            self.sink.emit(EventBody::Login(ev), false);
                        }
                    }
                }
                Err(e) => tracing::debug!(path = %a.path().display(), "cannot read: {e}"),
            }
        }
        let auth_active = self.auth.is_some();
        let mut reopened = false;
        for u in [self.wtmp.as_mut(), self.btmp.as_mut()].into_iter().flatten() {
            let was_open = u.tail.is_open();
            for rec in u.read() {
                if let Some(ev) = utmp_login(&rec, u.success) {
                    if auth_active && ev.service == "sshd" {
                        continue;
                    }
                    self.sink.emit(EventBody::Login(ev), false);
                }
            }
            reopened |= !was_open && u.tail.is_open();
        }
        if reopened {
            self.set_mode();
        }
    }
}

/// The login event of a utmp record, if it records a login.
fn utmp_login(r: &utmp::Utmp, success: bool) -> Option<LoginEvent> {
    let is_login = if success { r.kind == utmp::USER_PROCESS } else { r.kind == utmp::USER_PROCESS || r.kind == utmp::LOGIN_PROCESS };
    if !is_login || r.user.is_empty() {
        return None;
    }
    let remote = !r.host.is_empty() && !r.host.starts_with(':');
    let service = if r.line.starts_with("ssh") || (r.line.starts_with("pts/") && remote) { "sshd" } else { "login" };
    Some(LoginEvent {
        user: r.user.clone(),
        source_ip: r.addr.map(|a| a.to_string()),
        service: service.into(),
        method: if success { "wtmp" } else { "btmp" }.into(),
        success,
        pid: (r.pid != 0).then_some(r.pid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Counters;
    use std::io::Write;

    fn append(p: &std::path::Path, b: &[u8]) {
        std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(b).unwrap();
    }

    fn collector(cfg: LoginConfig, tx: crossbeam_channel::Sender<edr_event::Event>) -> LoginCollector {
        let auth = cfg.auth_logs.iter().find(|p| p.is_file()).map(|p| Tail::at_end(p));
        let wtmp = cfg.wtmp.as_ref().map(|p| Utmps::new(Tail::at_end(p), true));
        let btmp = cfg.btmp.as_ref().map(|p| Utmps::new(Tail::at_end(p), false));
        LoginCollector { cfg, auth, lines: Lines::default(), wtmp, btmp, sink: Sink::new(tx, Counters::new("login", "t")), last_look: Instant::now() }
    }

    fn logins(rx: &crossbeam_channel::Receiver<edr_event::Event>) -> Vec<LoginEvent> {
        rx.try_iter()
            .map(|e| match e.body {
                EventBody::Login(l) => l,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn auth_log_and_utmp_end_to_end_with_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.log");
        let wtmp = dir.path().join("wtmp");
        let btmp = dir.path().join("btmp");
        append(&auth, b"Mar  1 00:00:00 h sshd[1]: Accepted password for history from 10.0.0.1 port 1 ssh2\n");
        append(&wtmp, &utmp::build(utmp::USER_PROCESS, 5, "tty1", "history", "", None));
        std::fs::write(&btmp, b"").unwrap();
        let cfg = LoginConfig {
            auth_logs: vec![dir.path().join("secure"), auth.clone()],
            wtmp: Some(wtmp.clone()),
            btmp: Some(btmp.clone()),
            ..LoginConfig::default()
        };
        let (tx, rx) = crossbeam_channel::bounded(100);
        let mut c = collector(cfg, tx);
        c.poll();
        assert!(logins(&rx).is_empty(), "history is not replayed");

        append(&auth, b"Mar  1 00:00:01 h sshd[77]: Accepted publickey for alice from 2001:db8::5 port 2 ssh2\nMar  1 00:00:02 h sshd[78]: Failed password for invalid user oracle from 198.51.100.4 port 3 ssh2\nMar  1 00:00:03 h sshd[79]: Failed pass");
        // A console login and a remote one (already in the auth log).
        let mut recs = utmp::build(utmp::USER_PROCESS, 900, "tty2", "root", "", None);
        recs.extend(utmp::build(utmp::USER_PROCESS, 901, "pts/3", "alice", "2001:db8::5", Some("2001:db8::5".parse().unwrap())));
        append(&wtmp, &recs[..500]); // a partial record waits for the rest
        c.poll();
        let got = logins(&rx);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!((got[0].user.as_str(), got[0].success, got[0].pid), ("alice", true, Some(77)));
        assert_eq!((got[1].user.as_str(), got[1].success, got[1].method.as_str()), ("oracle", false, "password"));
        assert_eq!((got[2].user.as_str(), got[2].service.as_str(), got[2].method.as_str(), got[2].pid), ("root", "login", "wtmp", Some(900)));

        append(&wtmp, &recs[500..]);
        append(&auth, b"word for root from 198.51.100.4 port 4 ssh2\n");
        // Rotation of the auth log.
        std::fs::rename(&auth, dir.path().join("auth.log.1")).unwrap();
        append(&auth, b"Mar  1 00:00:04 h sshd[80]: Invalid user test from 198.51.100.4 port 5\n");
        append(&btmp, &utmp::build(utmp::LOGIN_PROCESS, 0, "tty1", "mallory", "", None));
        c.poll();
        let got = logins(&rx);
        assert_eq!(got.len(), 3, "remote wtmp login skipped as a duplicate: {got:?}");
        assert_eq!((got[0].user.as_str(), got[0].method.as_str(), got[0].pid), ("root", "password", Some(79)), "line split across polls");
        assert_eq!((got[1].user.as_str(), got[1].method.as_str()), ("test", "invalid-user"));
        assert_eq!((got[2].user.as_str(), got[2].success, got[2].method.as_str(), got[2].pid), ("mallory", false, "btmp", None));
    }

    #[test]
    fn utmp_only_reports_remote_logins_as_sshd() {
        let r = utmp::parse(&utmp::build(utmp::USER_PROCESS, 9, "pts/0", "bob", "203.0.113.9", Some("203.0.113.9".parse().unwrap()))).unwrap();
        let e = utmp_login(&r, true).unwrap();
        assert_eq!((e.service.as_str(), e.source_ip.as_deref()), ("sshd", Some("203.0.113.9")));
        let r = utmp::parse(&utmp::build(8, 9, "pts/0", "bob", "", None)).unwrap();
        assert!(utmp_login(&r, true).is_none(), "DEAD_PROCESS is a logout");
        let r = utmp::parse(&utmp::build(utmp::USER_PROCESS, 9, "pts/1", "bob", ":0", None)).unwrap();
        assert_eq!(utmp_login(&r, true).unwrap().service, "login");
    }
}
