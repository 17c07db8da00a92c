//! How a batch of events crosses into a plugin (`on-events` in the contract).
//!
//! The canonical ABI calls into the plugin's allocator once for every string
//! and list it copies in, and each such call is a full host-to-guest
//! transition (~60 ns). An exec event carries about twenty strings, so
//! per-event strings cost ~1.6 us an event. Here a batch's strings are packed
//! into one `text` buffer and one `lists` table, and the events refer to them
//! by offset: three allocations a batch, whatever its size.
//!
//! [`EncodedBatch::encode`] builds the wire form of a batch once; each plugin
//! then gets the subset of events it subscribed to, sharing `text` and `lists`.

use crate::model::*;

/// A string of the batch: `text[offset .. offset + len]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct StrRef {
    pub offset: u32,
    pub len: u32,
}

/// A list of strings of the batch: entries `first .. first + count` of
/// [`EncodedBatch::lists`], each an (offset, len) pair into the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct StrList {
    pub first: u32,
    pub count: u32,
}

/// `process-exec` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct WireExec {
    pub pid: u32,
    pub ppid: u32,
    #[cfg_attr(feature = "wasmtime", component(name = "entity-id"))]
    pub entity_id: u64,
    #[cfg_attr(feature = "wasmtime", component(name = "parent-entity-id"))]
    pub parent_entity_id: u64,
    pub exe: StrRef,
    pub argv: StrList,
    pub cwd: StrRef,
    pub uid: u32,
    pub user: StrRef,
    #[cfg_attr(feature = "wasmtime", component(name = "start-time"))]
    pub start_time: Timestamp,
    #[cfg_attr(feature = "wasmtime", component(name = "parent-exe"))]
    pub parent_exe: StrRef,
    #[cfg_attr(feature = "wasmtime", component(name = "parent-argv"))]
    pub parent_argv: StrList,
    pub ancestry: StrList,
}

/// `file-event` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct WireFile {
    pub op: FileOp,
    pub path: StrRef,
    #[cfg_attr(feature = "wasmtime", component(name = "old-path"))]
    pub old_path: Option<StrRef>,
    pub mode: Option<u32>,
    pub pid: Option<u32>,
    #[cfg_attr(feature = "wasmtime", component(name = "entity-id"))]
    pub entity_id: Option<u64>,
    pub exe: Option<StrRef>,
    pub uid: Option<u32>,
}

/// `network-event` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct WireNetwork {
    pub op: NetworkOp,
    pub transport: Transport,
    #[cfg_attr(feature = "wasmtime", component(name = "local-ip"))]
    pub local_ip: StrRef,
    #[cfg_attr(feature = "wasmtime", component(name = "local-port"))]
    pub local_port: u16,
    #[cfg_attr(feature = "wasmtime", component(name = "remote-ip"))]
    pub remote_ip: StrRef,
    #[cfg_attr(feature = "wasmtime", component(name = "remote-port"))]
    pub remote_port: u16,
    pub pid: Option<u32>,
    #[cfg_attr(feature = "wasmtime", component(name = "entity-id"))]
    pub entity_id: Option<u64>,
    pub exe: Option<StrRef>,
    pub uid: Option<u32>,
}

/// `login-event` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct WireLogin {
    pub user: StrRef,
    #[cfg_attr(feature = "wasmtime", component(name = "source-ip"))]
    pub source_ip: Option<StrRef>,
    pub service: StrRef,
    pub method: StrRef,
    pub success: bool,
    pub pid: Option<u32>,
}

/// `event-body` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(variant))]
pub enum WireBody {
    #[cfg_attr(feature = "wasmtime", component(name = "process-exec"))]
    ProcessExec(WireExec),
    #[cfg_attr(feature = "wasmtime", component(name = "process-exit"))]
    ProcessExit(ProcessExit),
    #[cfg_attr(feature = "wasmtime", component(name = "file"))]
    File(WireFile),
    #[cfg_attr(feature = "wasmtime", component(name = "network"))]
    Network(WireNetwork),
    #[cfg_attr(feature = "wasmtime", component(name = "login"))]
    Login(WireLogin),
}

/// `event` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "wasmtime", derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower))]
#[cfg_attr(feature = "wasmtime", component(record))]
pub struct WireEvent {
    pub id: u64,
    pub time: Timestamp,
    pub partial: bool,
    pub body: WireBody,
}

impl WireEvent {
    /// The event's kind, for subscription filtering.
    pub fn kind(&self) -> EventKind {
        match self.body {
            WireBody::ProcessExec(_) => EventKind::ProcessExec,
            WireBody::ProcessExit(_) => EventKind::ProcessExit,
            WireBody::File(_) => EventKind::File,
            WireBody::Network(_) => EventKind::Network,
            WireBody::Login(_) => EventKind::Login,
        }
    }
}

/// A batch in wire form: the three arguments of `on-events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Every string of the batch.
    pub text: String,
    /// String-list entries as (offset, len) pairs into `text`, flattened:
    /// a `list<u32>` is copied into the plugin in bulk, a list of records
    /// field by field.
    pub lists: Vec<u32>,
    pub events: Vec<WireEvent>,
}

impl EncodedBatch {
    /// Packs a batch. Strings longer than 4 GiB in total cannot be offset with
    /// u32; a batch is capped far below that by the dispatcher, and any string
    /// that would overflow is sent empty rather than wrong.
    pub fn encode<'a>(events: impl IntoIterator<Item = &'a Event, IntoIter: ExactSizeIterator>) -> Self {
        let events = events.into_iter();
        // Typical exec events carry ~150 bytes of text in ~12 list entries.
        let mut b = EncodedBatch {
            text: String::with_capacity(events.len() * 160),
            lists: Vec::with_capacity(events.len() * 24),
            events: Vec::with_capacity(events.len()),
        };
        for e in events {
            let body = match &e.body {
                EventBody::ProcessExec(x) => {
                    let exe = b.str(&x.exe);
                    // The parent's exe is usually the first ancestor: send it once.
                    let parent_exe = b.str(&x.parent_exe);
                    let ancestry_first = b.entries();
                    for (i, a) in x.ancestry.iter().enumerate() {
                        let r = if i == 0 && *a == x.parent_exe { parent_exe } else { b.str(a) };
                        b.push_entry(r);
                    }
                    let ancestry = StrList { first: ancestry_first, count: x.ancestry.len() as u32 };
                    WireBody::ProcessExec(WireExec {
                        pid: x.pid,
                        ppid: x.ppid,
                        entity_id: x.entity_id,
                        parent_entity_id: x.parent_entity_id,
                        exe,
                        argv: b.list(&x.argv),
                        cwd: b.str(&x.cwd),
                        uid: x.uid,
                        user: b.str(&x.user),
                        start_time: x.start_time,
                        parent_exe,
                        parent_argv: b.list(&x.parent_argv),
                        ancestry,
                    })
                }
                EventBody::ProcessExit(x) => WireBody::ProcessExit(x.clone()),
                EventBody::File(f) => WireBody::File(WireFile {
                    op: f.op,
                    path: b.str(&f.path),
                    old_path: f.old_path.as_deref().map(|s| b.str(s)),
                    mode: f.mode,
                    pid: f.pid,
                    entity_id: f.entity_id,
                    exe: f.exe.as_deref().map(|s| b.str(s)),
                    uid: f.uid,
                }),
                EventBody::Network(n) => WireBody::Network(WireNetwork {
                    op: n.op,
                    transport: n.transport,
                    local_ip: b.str(&n.local_ip),
                    local_port: n.local_port,
                    remote_ip: b.str(&n.remote_ip),
                    remote_port: n.remote_port,
                    pid: n.pid,
                    entity_id: n.entity_id,
                    exe: n.exe.as_deref().map(|s| b.str(s)),
                    uid: n.uid,
                }),
                EventBody::Login(l) => WireBody::Login(WireLogin {
                    user: b.str(&l.user),
                    source_ip: l.source_ip.as_deref().map(|s| b.str(s)),
                    service: b.str(&l.service),
                    method: b.str(&l.method),
                    success: l.success,
                    pid: l.pid,
                }),
            };
            b.events.push(WireEvent { id: e.id, time: e.time, partial: e.partial, body });
        }
        b
    }

    fn str(&mut self, s: &str) -> StrRef {
        let offset = self.text.len();
        match (u32::try_from(offset), u32::try_from(s.len())) {
            (Ok(o), Ok(l)) if o.checked_add(l).is_some() => {
                self.text.push_str(s);
                StrRef { offset: o, len: l }
            }
            _ => StrRef::default(),
        }
    }

    fn list(&mut self, items: &[String]) -> StrList {
        let first = self.entries();
        for s in items {
            let r = self.str(s);
            self.push_entry(r);
        }
        StrList { first, count: items.len() as u32 }
    }

    fn entries(&self) -> u32 {
        (self.lists.len() / 2) as u32
    }

    fn push_entry(&mut self, r: StrRef) {
        self.lists.extend_from_slice(&[r.offset, r.len]);
    }

    /// Entry `i` of the string-list table.
    pub fn entry(&self, i: u32) -> StrRef {
        let i = i as usize * 2;
        match (self.lists.get(i), self.lists.get(i + 1)) {
            (Some(&offset), Some(&len)) => StrRef { offset, len },
            _ => StrRef::default(),
        }
    }

    /// Resolves a string reference (for tests and native decoding).
    pub fn resolve(&self, r: StrRef) -> &str {
        self.text.get(r.offset as usize..(r.offset as usize + r.len as usize)).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_packed_and_resolvable() {
        let e = Event {
            id: 3,
            time: 4,
            partial: false,
            body: EventBody::ProcessExec(ProcessExec {
                exe: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "ünïcode".into()],
                parent_exe: "/usr/sbin/nginx".into(),
                ancestry: vec!["/usr/sbin/nginx".into(), "/sbin/init".into()],
                ..Default::default()
            }),
        };
        let b = EncodedBatch::encode([&e]);
        let WireBody::ProcessExec(x) = &b.events[0].body else { panic!() };
        assert_eq!(b.resolve(x.exe), "/bin/sh");
        let argv: Vec<&str> = (0..x.argv.count).map(|i| b.resolve(b.entry(x.argv.first + i))).collect();
        assert_eq!(argv, vec!["sh", "-c", "ünïcode"]);
        let anc: Vec<&str> = (0..x.ancestry.count).map(|i| b.resolve(b.entry(x.ancestry.first + i))).collect();
        assert_eq!(anc, vec!["/usr/sbin/nginx", "/sbin/init"]);
        // The parent exe went into the text once.
        assert_eq!(b.text.matches("/usr/sbin/nginx").count(), 1);
    }
}
