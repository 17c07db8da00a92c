//! The canary: one small batch, of every kind a plugin subscribes to, that a
//! new plugin version must get through (under its own deadline) before it
//! replaces the running one.

use edr_event::*;
use edr_runtime::Plugin;

/// Runs the canary batch; `Err` says how the plugin failed.
pub fn run(plugin: &mut Plugin) -> Result<(), String> {
    let now = time::now();
    let events = vec![
        Event {
            id: 1,
            time: now,
            partial: false,
            body: EventBody::ProcessExec(ProcessExec {
                pid: 4242,
                ppid: 1,
                entity_id: 0xca1a_0001,
                parent_entity_id: 0xca1a_0000,
                exe: "/usr/bin/true".into(),
                argv: vec!["true".into(), "--edr-canary".into()],
                cwd: "/".into(),
                uid: 0,
                user: "root".into(),
                start_time: now,
                parent_exe: "/usr/lib/systemd/systemd".into(),
                parent_argv: vec!["/sbin/init".into()],
                ancestry: vec!["/usr/lib/systemd/systemd".into()],
                // What a canary does not need (a field the contract adds later).
                ..ProcessExec::default()
            }),
        },
        Event { id: 2, time: now, partial: false, body: EventBody::ProcessExit(ProcessExit { pid: 4242, entity_id: 0xca1a_0001, exit_code: 0 }) },
        Event {
            id: 3,
            time: now,
            partial: false,
            body: EventBody::File(FileEvent {
                op: FileOp::Modify,
                path: "/var/lib/edr-canary".into(),
                old_path: None,
                mode: Some(0o100644),
                pid: Some(4242),
                entity_id: Some(0xca1a_0001),
                exe: Some("/usr/bin/true".into()),
                uid: Some(0),
            }),
        },
        Event {
            id: 4,
            time: now,
            partial: false,
            body: EventBody::Network(NetworkEvent {
                op: NetworkOp::Connect,
                transport: Transport::Tcp,
                local_ip: "127.0.0.1".into(),
                local_port: 40000,
                remote_ip: "127.0.0.1".into(),
                remote_port: 9,
                pid: Some(4242),
                entity_id: Some(0xca1a_0001),
                exe: Some("/usr/bin/true".into()),
                uid: Some(0),
                netns: None,
                bytes_sent: None,
                bytes_received: None,
            }),
        },
        Event {
            id: 5,
            time: now,
            partial: false,
            body: EventBody::Login(LoginEvent {
                user: "root".into(),
                source_ip: None,
                service: "login".into(),
                method: "password".into(),
                success: true,
                pid: Some(1),
            }),
        },
    ];
    let outcome = plugin.run(&events);
    match outcome.error {
        None => Ok(()),
        Some(e) => Err(format!("failed the canary batch: {e}")),
    }
}
