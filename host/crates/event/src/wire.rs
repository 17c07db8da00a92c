//! How a batch of events crosses into a plugin (`on-events` in the contract).
//!
//! The canonical ABI calls into the plugin's allocator once for every string
//! and list it copies in, and each such call is a full host-to-guest
//! transition (~60 ns). An exec event carries about twenty strings, so
//! per-event strings cost ~1.6 us an event. Here a batch's strings are packed
//! into one `text` buffer and one `lists` table, and the events refer to them
//! by offset: three allocations a batch, whatever its size.
//!
//! The wire records themselves (`event`, `process-exec` with `str-ref`
//! fields, ...) are not written here: they are the types generated from the
//! WIT, by wasmtime's `bindgen!` on the host (`crate::contract`) and by
//! `wit-bindgen` in the SDK. [`Batch`] is generic over them, and the one
//! encoder, [`wire_encoder!`](crate::wire_encoder), is expanded against each
//! generated module, so the host and the SDK's native harness fill the same
//! generated records with the same code.
//!
//! [`Batch::encode`] builds the wire form of a batch once; each plugin then
//! gets the subset of events it subscribed to, sharing `text` and `lists`.

use crate::model::{Event, EventKind};

/// A wire event type generated from the WIT: how one model event is written
/// into a batch. Implemented by [`wire_encoder!`](crate::wire_encoder).
pub trait Wire: Sized {
    /// Writes `event`'s strings into `batch` and returns its wire record.
    fn encode<E>(batch: &mut Batch<E>, event: &Event) -> Self;
    /// The event's kind, for subscription filtering.
    fn kind(&self) -> EventKind;
}

/// A batch in wire form: the three arguments of `on-events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<E> {
    /// Every string of the batch.
    pub text: String,
    /// String-list entries as (offset, len) pairs into `text`, flattened:
    /// a `list<u32>` is copied into the plugin in bulk, a list of records
    /// field by field.
    pub lists: Vec<u32>,
    /// The events, in the generated wire type.
    pub events: Vec<E>,
}

/// The host's batch: events in the wire type of the current contract version.
#[cfg(feature = "wasmtime")]
pub type EncodedBatch = Batch<WireEvent>;

/// The host's wire event: `event` of the current contract version.
#[cfg(feature = "wasmtime")]
pub type WireEvent = crate::contract::current::types::Event;

impl<E> Default for Batch<E> {
    fn default() -> Self {
        Batch { text: String::new(), lists: Vec::new(), events: Vec::new() }
    }
}

impl<E: Wire> Batch<E> {
    /// Packs a batch. Strings longer than 4 GiB in total cannot be offset with
    /// u32; a batch is capped far below that by the dispatcher, and any string
    /// that would overflow is sent empty rather than wrong.
    pub fn encode<'a>(events: impl IntoIterator<Item = &'a Event, IntoIter: ExactSizeIterator>) -> Self {
        let events = events.into_iter();
        // Typical exec events carry ~150 bytes of text in ~12 list entries.
        let mut b =
            Batch { text: String::with_capacity(events.len() * 160), lists: Vec::with_capacity(events.len() * 24), events: Vec::with_capacity(events.len()) };
        for e in events {
            let wire = E::encode(&mut b, e);
            b.events.push(wire);
        }
        b
    }
}

impl<E> Batch<E> {
    /// Appends a string to the text; its (offset, len), or (0, 0) past 4 GiB.
    #[doc(hidden)]
    pub fn push_str(&mut self, s: &str) -> (u32, u32) {
        let offset = self.text.len();
        match (u32::try_from(offset), u32::try_from(s.len())) {
            (Ok(o), Ok(l)) if o.checked_add(l).is_some() => {
                self.text.push_str(s);
                (o, l)
            }
            _ => (0, 0),
        }
    }

    /// Appends a string list; its (first, count) in the entry table.
    #[doc(hidden)]
    pub fn push_list<'s>(&mut self, items: impl ExactSizeIterator<Item = &'s str>) -> (u32, u32) {
        let first = self.entries();
        let count = items.len() as u32;
        for s in items {
            let r = self.push_str(s);
            self.push_entry(r);
        }
        (first, count)
    }

    /// Number of entries in the string-list table.
    #[doc(hidden)]
    pub fn entries(&self) -> u32 {
        (self.lists.len() / 2) as u32
    }

    /// Appends an entry (offset, len) to the string-list table.
    #[doc(hidden)]
    pub fn push_entry(&mut self, (offset, len): (u32, u32)) {
        self.lists.extend_from_slice(&[offset, len]);
    }

    /// Entry `i` of the string-list table as (offset, len).
    pub fn entry(&self, i: u32) -> (u32, u32) {
        let i = i as usize * 2;
        match (self.lists.get(i), self.lists.get(i + 1)) {
            (Some(&offset), Some(&len)) => (offset, len),
            _ => (0, 0),
        }
    }

    /// The text at (offset, len), empty when out of range (for tests and native decoding).
    pub fn resolve(&self, (offset, len): (u32, u32)) -> &str {
        self.text.get(offset as usize..(offset as usize + len as usize)).unwrap_or("")
    }
}

/// Implements [`Wire`] for `$wit::Event`, where `$wit` names (at the call
/// site) a module of types generated from the WIT's `types` interface, and
/// the contract enums' `From` impls exist (see [`bridge_enums!`](crate::bridge_enums)).
/// This is the one encoder: a field added to an event in the WIT fails to
/// compile here until it is filled.
#[macro_export]
macro_rules! wire_encoder {
    ($wit:ident) => {
        impl $crate::wire::Wire for $wit::Event {
            fn encode<E>(b: &mut $crate::wire::Batch<E>, e: &$crate::Event) -> Self {
                use $crate::EventBody as B;
                let s = |b: &mut $crate::wire::Batch<E>, x: &str| {
                    let (offset, len) = b.push_str(x);
                    $wit::StrRef { offset, len }
                };
                let l = |b: &mut $crate::wire::Batch<E>, x: &[String]| {
                    let (first, count) = b.push_list(x.iter().map(String::as_str));
                    $wit::StrList { first, count }
                };
                let body = match &e.body {
                    B::ProcessExec(x) => {
                        let exe = s(b, &x.exe);
                        // The parent's exe is usually the first ancestor: send it once.
                        let parent_exe = s(b, &x.parent_exe);
                        let ancestry_first = b.entries();
                        for (i, a) in x.ancestry.iter().enumerate() {
                            let r = if i == 0 && *a == x.parent_exe { parent_exe } else { s(b, a) };
                            b.push_entry((r.offset, r.len));
                        }
                        let ancestry = $wit::StrList { first: ancestry_first, count: x.ancestry.len() as u32 };
                        $wit::EventBody::ProcessExec($wit::ProcessExec {
                            pid: x.pid,
                            ppid: x.ppid,
                            entity_id: x.entity_id,
                            parent_entity_id: x.parent_entity_id,
                            exe,
                            argv: l(b, &x.argv),
                            cwd: s(b, &x.cwd),
                            uid: x.uid,
                            gid: x.gid,
                            cgroup_id: x.cgroup_id,
                            user: s(b, &x.user),
                            start_time: x.start_time,
                            parent_exe,
                            parent_argv: l(b, &x.parent_argv),
                            ancestry,
                        })
                    }
                    B::ProcessExit(x) => $wit::EventBody::ProcessExit($wit::ProcessExit { pid: x.pid, entity_id: x.entity_id, exit_code: x.exit_code }),
                    B::File(f) => $wit::EventBody::File($wit::FileEvent {
                        op: f.op.into(),
                        path: s(b, &f.path),
                        old_path: f.old_path.as_deref().map(|x| s(b, x)),
                        mode: f.mode,
                        pid: f.pid,
                        entity_id: f.entity_id,
                        exe: f.exe.as_deref().map(|x| s(b, x)),
                        uid: f.uid,
                    }),
                    B::Network(n) => $wit::EventBody::Network($wit::NetworkEvent {
                        op: n.op.into(),
                        transport: n.transport.into(),
                        local_ip: s(b, &n.local_ip),
                        local_port: n.local_port,
                        remote_ip: s(b, &n.remote_ip),
                        remote_port: n.remote_port,
                        pid: n.pid,
                        entity_id: n.entity_id,
                        exe: n.exe.as_deref().map(|x| s(b, x)),
                        uid: n.uid,
                        netns: n.netns,
                        bytes_sent: n.bytes_sent,
                        bytes_received: n.bytes_received,
                    }),
                    B::Login(x) => $wit::EventBody::Login($wit::LoginEvent {
                        user: s(b, &x.user),
                        source_ip: x.source_ip.as_deref().map(|v| s(b, v)),
                        service: s(b, &x.service),
                        method: s(b, &x.method),
                        success: x.success,
                        pid: x.pid,
                    }),
                };
                $wit::Event { id: e.id, time: e.time, partial: e.partial, body }
            }

            fn kind(&self) -> $crate::EventKind {
                match self.body {
                    $wit::EventBody::ProcessExec(_) => $crate::EventKind::ProcessExec,
                    $wit::EventBody::ProcessExit(_) => $crate::EventKind::ProcessExit,
                    $wit::EventBody::File(_) => $crate::EventKind::File,
                    $wit::EventBody::Network(_) => $crate::EventKind::Network,
                    $wit::EventBody::Login(_) => $crate::EventKind::Login,
                }
            }
        }
    };
}

#[cfg(all(test, feature = "wasmtime"))]
mod tests {
    use super::*;
    use crate::contract::current::types as wit;
    use crate::model::{EventBody, ProcessExec};

    fn list(b: &EncodedBatch, l: wit::StrList) -> Vec<&str> {
        (0..l.count).map(|i| b.resolve(b.entry(l.first + i))).collect()
    }

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
        let wit::EventBody::ProcessExec(x) = &b.events[0].body else { panic!() };
        assert_eq!(b.resolve((x.exe.offset, x.exe.len)), "/bin/sh");
        assert_eq!(list(&b, x.argv), vec!["sh", "-c", "ünïcode"]);
        assert_eq!(list(&b, x.ancestry), vec!["/usr/sbin/nginx", "/sbin/init"]);
        // The parent exe went into the text once.
        assert_eq!(b.text.matches("/usr/sbin/nginx").count(), 1);
        assert_eq!(b.events[0].kind(), EventKind::ProcessExec);
    }

    #[test]
    fn out_of_range_references_resolve_empty() {
        let b = EncodedBatch::default();
        assert_eq!(b.entry(7), (0, 0));
        assert_eq!(b.resolve((5, u32::MAX)), "");
    }
}
