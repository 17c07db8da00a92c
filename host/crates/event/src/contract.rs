//! The plugin contract as wasmtime's `bindgen!` generates it from the WIT, one
//! module per contract version the host links (feature `wasmtime`).
//!
//! * [`v0_2`] is `wit/edr-plugin.wit` (`edr:plugin@0.2.0`), the current
//!   version, re-exported as [`current`]; [`v0_1`] is the frozen
//!   `wit/versions/0.1.0`. Each module's `VERSION` is the only place
//!   the version is written in Rust (tests check it against the WIT).
//! * The generated records are the wire form: [`crate::wire`]'s encoder fills
//!   them, and the runtime lowers them into plugins as they are.
//! * Conversions to the model ([`crate::model`]) are exhaustive `From` impls
//!   (the enums' come from [`bridge_enums!`](crate::bridge_enums)): a field or
//!   variant added to the WIT fails to compile until it is handled.
//! * Between versions: an older version's events are converted from the
//!   current version's ([`v0_1`]'s `From<&current::types::Event>`), so a batch
//!   is encoded once whatever versions the loaded plugins were built against.

use crate::model;

/// `edr:plugin@0.2.0`, the current version: exports in the `detect` interface.
#[allow(missing_docs)]
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../../wit",
        world: "detector",
        additional_derives: [PartialEq, Eq],
    });

    /// The contract version of this module (`edr:plugin@…`).
    pub const VERSION: &str = crate::versions::V0_2;

    pub use edr::plugin::types;
    /// The exported `detect` interface.
    pub use exports::edr::plugin::detect;
}

/// `edr:plugin@0.1.0`, frozen: `init` and `on-events` exported by the world itself.
#[allow(missing_docs)]
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../../wit/versions/0.1.0",
        world: "detector",
        additional_derives: [PartialEq, Eq],
    });

    /// The contract version of this module (`edr:plugin@…`).
    pub const VERSION: &str = crate::versions::V0_1;

    pub use edr::plugin::types;
}

/// The contract version plugins are built against today (what the SDK targets).
pub use v0_2 as current;

/// Every contract version this host links, newest first.
pub const VERSIONS: &[&str] = crate::versions::ALL;

/// The model <-> generated conversions of one version's `types` module.
macro_rules! model_conversions {
    ($wit:ident $(, $frozen:ident)?) => {
        crate::bridge_enums!($wit $(, $frozen)?);

        impl From<&model::PluginConfig> for $wit::Config {
            fn from(c: &model::PluginConfig) -> Self {
                $wit::Config {
                    settings: c.settings.clone(),
                    files: c.files.iter().map(|f| $wit::DataFile { name: f.name.clone(), content: f.content.clone() }).collect(),
                }
            }
        }

        impl From<$wit::PluginInfo> for model::PluginInfo {
            fn from(i: $wit::PluginInfo) -> Self {
                let $wit::PluginInfo { name, version, description, subscriptions } = i;
                model::PluginInfo { name, version, description, subscriptions: subscriptions.into_iter().map(Into::into).collect() }
            }
        }

        impl From<$wit::Finding> for model::Finding {
            fn from(f: $wit::Finding) -> Self {
                let $wit::Finding { rule_id, title, severity, techniques, message, author, event_ids, evidence } = f;
                model::Finding { rule_id, title, severity: severity.into(), techniques, message, author, event_ids, evidence }
            }
        }

        impl From<model::ProcessInfo> for $wit::ProcessInfo {
            fn from(p: model::ProcessInfo) -> Self {
                let model::ProcessInfo { pid, entity_id, exe, argv, uid, start_time } = p;
                $wit::ProcessInfo { pid, entity_id, exe, argv, uid, start_time }
            }
        }

        impl From<$wit::Action> for model::Action {
            fn from(a: $wit::Action) -> Self {
                use model::Action as M;
                use $wit::Action as W;
                match a {
                    W::KillProcess($wit::KillTarget { pid, entity_id, tree }) => M::KillProcess(model::KillTarget { pid, entity_id, tree }),
                    W::SuspendProcess(pid) => M::SuspendProcess(pid),
                    W::ResumeProcess(pid) => M::ResumeProcess(pid),
                    W::QuarantineFile(path) => M::QuarantineFile(path),
                    W::DeleteFile(path) => M::DeleteFile(path),
                    W::FetchFile(path) => M::FetchFile(path),
                    W::BlockExec(path) => M::BlockExec(path),
                    W::IsolateHost => M::IsolateHost,
                }
            }
        }
    };
}

mod current_conversions {
    use super::*;
    use v0_2::types as wit;
    model_conversions!(wit);
    // Only the current version is encoded; older ones convert from it
    // (below), so a field added to the current WIT is filled in one place.
    crate::wire_encoder!(wit);

    impl wit::Event {
        /// The event's kind, for subscription filtering.
        pub fn kind(&self) -> model::EventKind {
            crate::wire::Wire::kind(self)
        }
    }
}

mod v0_1_conversions {
    use super::*;
    use v0_1::types as wit;
    model_conversions!(wit, frozen_0_1);

    use v0_2::types as cur;

    fn s(r: cur::StrRef) -> wit::StrRef {
        wit::StrRef { offset: r.offset, len: r.len }
    }

    fn l(r: cur::StrList) -> wit::StrList {
        wit::StrList { first: r.first, count: r.count }
    }

    /// 0.1.0 events from current ones (sharing the batch's `text` and
    /// `lists`). Written against 0.1.0's frozen fields: a field the current
    /// version adds is simply not passed to 0.1.0 plugins, and an event 0.1.0
    /// cannot express (a network `close`) is refused with
    /// [`NotInV0_1`](super::NotInV0_1): the runtime leaves it out of a 0.1.0
    /// plugin's batch (the others keep their ids).
    impl TryFrom<&cur::Event> for wit::Event {
        type Error = super::NotInV0_1;

        fn try_from(e: &cur::Event) -> Result<Self, Self::Error> {
            let body = match &e.body {
                cur::EventBody::ProcessExec(x) => wit::EventBody::ProcessExec(wit::ProcessExec {
                    pid: x.pid,
                    ppid: x.ppid,
                    entity_id: x.entity_id,
                    parent_entity_id: x.parent_entity_id,
                    exe: s(x.exe),
                    argv: l(x.argv),
                    cwd: s(x.cwd),
                    uid: x.uid,
                    user: s(x.user),
                    start_time: x.start_time,
                    parent_exe: s(x.parent_exe),
                    parent_argv: l(x.parent_argv),
                    ancestry: l(x.ancestry),
                }),
                cur::EventBody::ProcessExit(x) => wit::EventBody::ProcessExit(wit::ProcessExit { pid: x.pid, entity_id: x.entity_id, exit_code: x.exit_code }),
                cur::EventBody::File(f) => wit::EventBody::File(wit::FileEvent {
                    op: model::FileOp::from(f.op).into(),
                    path: s(f.path),
                    old_path: f.old_path.map(s),
                    mode: f.mode,
                    pid: f.pid,
                    entity_id: f.entity_id,
                    exe: f.exe.map(s),
                    uid: f.uid,
                }),
                cur::EventBody::Network(n) => wit::EventBody::Network(wit::NetworkEvent {
                    op: model::NetworkOp::from(n.op).try_into().map_err(|op| super::NotInV0_1 { id: e.id, op })?,
                    transport: model::Transport::from(n.transport).into(),
                    local_ip: s(n.local_ip),
                    local_port: n.local_port,
                    remote_ip: s(n.remote_ip),
                    remote_port: n.remote_port,
                    pid: n.pid,
                    entity_id: n.entity_id,
                    exe: n.exe.map(s),
                    uid: n.uid,
                }),
                cur::EventBody::Login(x) => wit::EventBody::Login(wit::LoginEvent {
                    user: s(x.user),
                    source_ip: x.source_ip.map(s),
                    service: s(x.service),
                    method: s(x.method),
                    success: x.success,
                    pid: x.pid,
                }),
            };
            Ok(wit::Event { id: e.id, time: e.time, partial: e.partial, body })
        }
    }
}

/// A current event that the frozen 0.1.0 contract cannot express (a network
/// `close`): it is not sent to 0.1.0 plugins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {id}: network op `{op}` has no form in edr:plugin@0.1.0")]
pub struct NotInV0_1 {
    /// The event's id.
    pub id: u64,
    /// The op 0.1.0 lacks.
    pub op: model::NetworkOp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, EventBody, FileEvent, FileOp};
    use crate::wire::Batch;

    /// Each module's `VERSION` is the version its WIT declares.
    #[test]
    fn versions_match_the_wit() {
        for (version, path) in [(v0_2::VERSION, "../../../wit/edr-plugin.wit"), (v0_1::VERSION, "../../../wit/versions/0.1.0/edr-plugin.wit")] {
            let wit = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("reading the WIT");
            assert!(wit.contains(&format!("\npackage edr:plugin@{version};")), "{path} does not declare {version}");
        }
        assert_eq!(current::VERSION, crate::versions::CURRENT);
        assert_eq!(VERSIONS, [v0_2::VERSION, v0_1::VERSION]);
        assert_eq!(crate::versions::major_minor("0.2.0"), "0.2");
        assert_eq!(crate::versions::major_minor("10.11"), "10.11");
    }

    /// A 0.1.0 event converted from the current wire form keeps every
    /// field 0.1.0 has, pointing into the same `text` and `lists`.
    #[test]
    fn old_version_events_convert_from_current() {
        let events = [
            Event {
                id: 1,
                time: 2,
                partial: false,
                body: EventBody::ProcessExec(crate::ProcessExec { exe: "/bin/sh".into(), argv: vec!["sh".into()], uid: 7, ..Default::default() }),
            },
            Event {
                id: 2,
                time: 3,
                partial: true,
                body: EventBody::File(FileEvent {
                    op: FileOp::Rename,
                    path: "/etc/x".into(),
                    old_path: Some("/tmp/x".into()),
                    mode: Some(0o644),
                    pid: None,
                    entity_id: None,
                    exe: None,
                    uid: Some(0),
                }),
            },
        ];
        let cur = Batch::<v0_2::types::Event>::encode(&events);
        let converted: Vec<v0_1::types::Event> = cur.events.iter().map(|e| e.try_into().unwrap()).collect();
        let text = |r: v0_1::types::StrRef| &cur.text[r.offset as usize..(r.offset + r.len) as usize];
        let (a, b) = (&converted[0], &converted[1]);
        assert_eq!((a.id, a.time, a.partial, b.id, b.time, b.partial), (1, 2, false, 2, 3, true));
        let v0_1::types::EventBody::ProcessExec(x) = &a.body else { panic!("{a:?}") };
        assert_eq!((text(x.exe), x.uid, x.argv.count), ("/bin/sh", 7, 1));
        let (o, l) = (cur.lists[2 * x.argv.first as usize], cur.lists[2 * x.argv.first as usize + 1]);
        assert_eq!(&cur.text[o as usize..(o + l) as usize], "sh");
        let v0_1::types::EventBody::File(f) = &b.body else { panic!("{b:?}") };
        assert_eq!((text(f.path), f.old_path.map(text), f.mode, f.uid), ("/etc/x", Some("/tmp/x"), Some(0o644), Some(0)));
        assert_eq!(f.op, v0_1::types::FileOp::Rename);
    }

    fn network(id: u64, op: model::NetworkOp, bytes: Option<(u64, u64)>) -> Event {
        Event {
            id,
            time: id,
            partial: false,
            body: EventBody::Network(model::NetworkEvent {
                op,
                transport: model::Transport::Tcp,
                local_ip: "127.0.0.1".into(),
                local_port: 40_000,
                remote_ip: "127.0.0.1".into(),
                remote_port: 8080,
                pid: Some(7),
                entity_id: Some(8),
                exe: Some("/usr/bin/curl".into()),
                uid: Some(0),
                netns: Some(4_026_531_840),
                bytes_sent: bytes.map(|b| b.0),
                bytes_received: bytes.map(|b| b.1),
            }),
        }
    }

    /// A close has no form in 0.1.0: its conversion is refused (naming the
    /// event), and the connect and accept around it convert with their ids.
    #[test]
    fn a_close_is_not_converted_to_0_1_0() {
        use model::NetworkOp::{Accept, Close, Connect};
        let events = [network(10, Connect, None), network(11, Close, Some((6, 7))), network(12, Accept, None)];
        let cur = Batch::<v0_2::types::Event>::encode(&events);
        let v0_2::types::EventBody::Network(n) = &cur.events[1].body else { panic!() };
        assert_eq!((n.op, n.bytes_sent, n.bytes_received), (v0_2::types::NetworkOp::Close, Some(6), Some(7)));
        let converted: Vec<Result<v0_1::types::Event, NotInV0_1>> = cur.events.iter().map(TryInto::try_into).collect();
        assert_eq!(converted[1], Err(NotInV0_1 { id: 11, op: Close }));
        assert_eq!(converted[1].as_ref().unwrap_err().to_string(), "event 11: network op `close` has no form in edr:plugin@0.1.0");
        let ok: Vec<(u64, v0_1::types::NetworkOp)> = converted
            .iter()
            .flatten()
            .map(|e| match &e.body {
                v0_1::types::EventBody::Network(n) => (e.id, n.op),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ok, [(10, v0_1::types::NetworkOp::Connect), (12, v0_1::types::NetworkOp::Accept)]);
        assert_eq!(v0_1::types::NetworkOp::try_from(Close), Err(Close));
        assert_eq!(model::NetworkOp::from(v0_1::types::NetworkOp::Listen), model::NetworkOp::Listen);
    }

    #[test]
    fn enums_round_trip_through_every_version() {
        for k in model::EventKind::ALL {
            assert_eq!(model::EventKind::from(v0_2::types::EventKind::from(*k)), *k);
            assert_eq!(model::EventKind::from(v0_1::types::EventKind::from(*k)), *k);
        }
        for op in model::NetworkOp::ALL {
            assert_eq!(model::NetworkOp::from(v0_2::types::NetworkOp::from(*op)), *op);
            if let Ok(old) = v0_1::types::NetworkOp::try_from(*op) {
                assert_eq!(model::NetworkOp::from(old), *op);
            }
        }
        for s in model::Severity::ALL {
            assert_eq!(model::Severity::from(v0_2::types::Severity::from(*s)), *s);
        }
    }
}
