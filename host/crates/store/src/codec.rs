//! The compact binary form of an event's body, kept in `events.body`.
//!
//! Why a hand-written codec rather than a serde format: the store keeps
//! events for weeks, across agent upgrades, so the bytes must not change
//! meaning when someone reorders the fields of `edr_event::model` (which
//! happens: their order follows the WIT contract). A serde binary format such
//! as postcard encodes fields by position and would silently misread old
//! rows after such a reorder; JSON survives it but costs 3-5x the bytes
//! (measured by the `bench` example: see SCHEMA.md). Here every field is
//! written by name in code that destructures the structs exhaustively, so
//! adding a field to the model fails to compile until the codec learns it
//! (and its format version is bumped).
//!
//! Layout (format 5; format 1 lacked the exec's gid, formats 1-2 its cgroup id, read as 0; formats 1-3 the network namespace, formats 1-4 the close op and the byte counts, absent): one version byte, one kind byte, then the kind's
//! fields in the order below. Integers are LEB128 varints (`i32` zigzagged),
//! strings are a varint length and UTF-8 bytes, lists a varint count and
//! their items, options a presence bit in a flags varint. The event's `id`,
//! `time` and `partial` are columns of the row and are not repeated.
//!
//! | kind | fields |
//! |---|---|
//! | 1 exec | pid, ppid, entity_id, parent_entity_id, uid, gid (format 2), cgroup_id (format 3), start_time (delta to the event time, zigzag), exe, argv, cwd, user, parent_exe, parent_argv, ancestry (flags bit 0: `ancestry[0] == parent_exe`, which is then not repeated) |
//! | 2 exit | pid, entity_id, exit_code |
//! | 3 file | flags (old_path, mode, pid, entity_id, exe, uid), op, path, then the present options |
//! | 4 network | flags (pid, entity_id, exe, uid, netns (format 4), bytes_sent, bytes_received (format 5)), op, transport, local_ip, local_port, remote_ip, remote_port, then the present options |
//! | 5 login | flags (source_ip, pid, success), user, service, method, then the present options |

use edr_event::{Event, EventBody, EventKind, FileEvent, FileOp, LoginEvent, NetworkEvent, NetworkOp, ProcessExec, ProcessExit, Timestamp, Transport};

/// The format version written by [`encode_body`].
pub const FORMAT: u8 = 5;

/// A body that could not be decoded: a damaged row or a newer format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode a stored event body: {0}")]
pub struct DecodeError(pub String);

/// The store's code for an event kind (the `events.kind` column).
pub fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::ProcessExec => 1,
        EventKind::ProcessExit => 2,
        EventKind::File => 3,
        EventKind::Network => 4,
        EventKind::Login => 5,
    }
}

/// Declares the stable store code of each variant of an enum, both ways,
/// from one table: `$to` (public: the columns use it) and `$from` (decoding).
macro_rules! stable_codes {
    ($(#[$doc:meta])* $to:ident, $from:ident, $ty:ident, $what:literal { $($variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$doc])*
        pub fn $to(v: $ty) -> u8 {
            match v {
                $($ty::$variant => $code,)+
            }
        }

        fn $from(code: u64) -> Result<$ty, DecodeError> {
            Ok(match code {
                $($code => $ty::$variant,)+
                other => return Err(DecodeError(format!(concat!("unknown ", $what, " code {}"), other))),
            })
        }
    };
}

stable_codes! {
    /// The store's code for a file operation (the `events.op` column of file events).
    file_op_code, file_op_from, FileOp, "file op" {
        Create = 1, Modify = 2, Delete = 3, Rename = 4, Chmod = 5, Attrib = 6, Read = 7,
    }
}

stable_codes! {
    /// The store's code for a network operation (the `events.op` column of network events).
    network_op_code, network_op_from, NetworkOp, "network op" { Connect = 1, Accept = 2, Listen = 3, Close = 4 }
}

stable_codes! {
    /// The IP protocol number of a transport (the `events.transport` column).
    transport_code, transport_from, Transport, "transport" { Tcp = 6, Udp = 17 }
}

struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn sint(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }
    fn str(&mut self, s: &str) {
        self.uint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn strs(&mut self, v: &[String]) {
        self.uint(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
}

struct In<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> In<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| DecodeError("truncated body".into()))?;
        self.pos += 1;
        Ok(b)
    }
    fn uint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift >= 64 {
                return Err(DecodeError("varint too long".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let v = self.uint()?;
        u32::try_from(v).map_err(|_| DecodeError(format!("value {v} does not fit in 32 bits")))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let v = self.uint()?;
        u16::try_from(v).map_err(|_| DecodeError(format!("value {v} does not fit in 16 bits")))
    }
    fn sint(&mut self) -> Result<i64, DecodeError> {
        let v = self.uint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.uint()? as usize;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| DecodeError(format!("string of {len} bytes runs past the end")))?;
        let s = std::str::from_utf8(&self.buf[self.pos..end]).map_err(|e| DecodeError(format!("string is not UTF-8: {e}")))?;
        self.pos = end;
        Ok(s.to_string())
    }
    fn strs(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.uint()? as usize;
        // Every string takes at least one byte: refuse counts the buffer cannot hold.
        if n > self.buf.len() - self.pos {
            return Err(DecodeError(format!("list of {n} strings runs past the end")));
        }
        (0..n).map(|_| self.str()).collect()
    }
}

/// Appends the encoded body of `event` to `buf` (which the caller may reuse).
pub fn encode_body(event: &Event, buf: &mut Vec<u8>) {
    let mut o = Out(buf);
    o.0.push(FORMAT);
    o.0.push(kind_code(event.kind()));
    match &event.body {
        EventBody::ProcessExec(e) => {
            let ProcessExec {
                pid,
                ppid,
                entity_id,
                parent_entity_id,
                exe,
                argv,
                cwd,
                uid,
                gid,
                cgroup_id,
                user,
                start_time,
                parent_exe,
                parent_argv,
                ancestry,
            } = e;
            let shared_parent = ancestry.first().is_some_and(|a| a == parent_exe);
            o.uint(u64::from(shared_parent));
            o.uint(u64::from(*pid));
            o.uint(u64::from(*ppid));
            o.uint(*entity_id);
            o.uint(*parent_entity_id);
            o.uint(u64::from(*uid));
            o.uint(u64::from(*gid));
            o.uint(*cgroup_id);
            o.sint((*start_time as i64).wrapping_sub(event.time as i64));
            o.str(exe);
            o.strs(argv);
            o.str(cwd);
            o.str(user);
            o.str(parent_exe);
            o.strs(parent_argv);
            o.strs(if shared_parent { &ancestry[1..] } else { ancestry });
        }
        EventBody::ProcessExit(e) => {
            let ProcessExit { pid, entity_id, exit_code } = e;
            o.uint(u64::from(*pid));
            o.uint(*entity_id);
            o.sint(i64::from(*exit_code));
        }
        EventBody::File(f) => {
            let FileEvent { op, path, old_path, mode, pid, entity_id, exe, uid } = f;
            let flags = bits(&[old_path.is_some(), mode.is_some(), pid.is_some(), entity_id.is_some(), exe.is_some(), uid.is_some()]);
            o.uint(flags);
            o.uint(u64::from(file_op_code(*op)));
            o.str(path);
            if let Some(p) = old_path {
                o.str(p);
            }
            if let Some(m) = mode {
                o.uint(u64::from(*m));
            }
            if let Some(p) = pid {
                o.uint(u64::from(*p));
            }
            if let Some(e) = entity_id {
                o.uint(*e);
            }
            if let Some(x) = exe {
                o.str(x);
            }
            if let Some(u) = uid {
                o.uint(u64::from(*u));
            }
        }
        EventBody::Network(n) => {
            let NetworkEvent { op, transport, local_ip, local_port, remote_ip, remote_port, pid, entity_id, exe, uid, netns, bytes_sent, bytes_received } = n;
            o.uint(bits(&[pid.is_some(), entity_id.is_some(), exe.is_some(), uid.is_some(), netns.is_some(), bytes_sent.is_some(), bytes_received.is_some()]));
            o.uint(u64::from(network_op_code(*op)));
            o.uint(u64::from(transport_code(*transport)));
            o.str(local_ip);
            o.uint(u64::from(*local_port));
            o.str(remote_ip);
            o.uint(u64::from(*remote_port));
            if let Some(p) = pid {
                o.uint(u64::from(*p));
            }
            if let Some(e) = entity_id {
                o.uint(*e);
            }
            if let Some(x) = exe {
                o.str(x);
            }
            if let Some(u) = uid {
                o.uint(u64::from(*u));
            }
            if let Some(ns) = netns {
                o.uint(*ns);
            }
            for b in [bytes_sent, bytes_received].into_iter().flatten() {
                o.uint(*b);
            }
        }
        EventBody::Login(l) => {
            let LoginEvent { user, source_ip, service, method, success, pid } = l;
            o.uint(bits(&[source_ip.is_some(), pid.is_some(), *success]));
            o.str(user);
            o.str(service);
            o.str(method);
            if let Some(ip) = source_ip {
                o.str(ip);
            }
            if let Some(p) = pid {
                o.uint(u64::from(*p));
            }
        }
    }
}

fn bits(flags: &[bool]) -> u64 {
    flags.iter().enumerate().fold(0, |acc, (i, &b)| acc | (u64::from(b) << i))
}

/// Rebuilds an event from its row's `id`, `time`, `partial` and `body`.
pub fn decode_event(id: u64, time: Timestamp, partial: bool, body: &[u8]) -> Result<Event, DecodeError> {
    let mut r = In { buf: body, pos: 0 };
    let format = r.byte()?;
    if !(1..=FORMAT).contains(&format) {
        return Err(DecodeError(format!("body format {format} is not one this agent reads (it reads {FORMAT}); was the store written by a newer agent?")));
    }
    let kind = r.byte()?;
    let decoded = match kind {
        1 => {
            let shared_parent = r.uint()? != 0;
            let pid = r.u32()?;
            let ppid = r.u32()?;
            let entity_id = r.uint()?;
            let parent_entity_id = r.uint()?;
            let uid = r.u32()?;
            let gid = if format >= 2 { r.u32()? } else { 0 };
            let cgroup_id = if format >= 3 { r.uint()? } else { 0 };
            let start_time = (time as i64).wrapping_add(r.sint()?) as u64;
            let exe = r.str()?;
            let argv = r.strs()?;
            let cwd = r.str()?;
            let user = r.str()?;
            let parent_exe = r.str()?;
            let parent_argv = r.strs()?;
            let mut ancestry = r.strs()?;
            if shared_parent {
                ancestry.insert(0, parent_exe.clone());
            }
            EventBody::ProcessExec(ProcessExec {
                pid,
                ppid,
                entity_id,
                parent_entity_id,
                exe,
                argv,
                cwd,
                uid,
                gid,
                cgroup_id,
                user,
                start_time,
                parent_exe,
                parent_argv,
                ancestry,
            })
        }
        2 => {
            let pid = r.u32()?;
            let entity_id = r.uint()?;
            let code = r.sint()?;
            let exit_code = i32::try_from(code).map_err(|_| DecodeError(format!("exit code {code} out of range")))?;
            EventBody::ProcessExit(ProcessExit { pid, entity_id, exit_code })
        }
        3 => {
            let flags = r.uint()?;
            let op = file_op_from(r.uint()?)?;
            let path = r.str()?;
            let old_path = if flags & 1 != 0 { Some(r.str()?) } else { None };
            let mode = if flags & 2 != 0 { Some(r.u32()?) } else { None };
            let pid = if flags & 4 != 0 { Some(r.u32()?) } else { None };
            let entity_id = if flags & 8 != 0 { Some(r.uint()?) } else { None };
            let exe = if flags & 16 != 0 { Some(r.str()?) } else { None };
            let uid = if flags & 32 != 0 { Some(r.u32()?) } else { None };
            EventBody::File(FileEvent { op, path, old_path, mode, pid, entity_id, exe, uid })
        }
        4 => {
            let flags = r.uint()?;
            let op = network_op_from(r.uint()?)?;
            let transport = transport_from(r.uint()?)?;
            let local_ip = r.str()?;
            let local_port = r.u16()?;
            let remote_ip = r.str()?;
            let remote_port = r.u16()?;
            let pid = if flags & 1 != 0 { Some(r.u32()?) } else { None };
            let entity_id = if flags & 2 != 0 { Some(r.uint()?) } else { None };
            let exe = if flags & 4 != 0 { Some(r.str()?) } else { None };
            let uid = if flags & 8 != 0 { Some(r.u32()?) } else { None };
            let netns = if flags & 16 != 0 { Some(r.uint()?) } else { None };
            let bytes_sent = if flags & 32 != 0 { Some(r.uint()?) } else { None };
            let bytes_received = if flags & 64 != 0 { Some(r.uint()?) } else { None };
            EventBody::Network(NetworkEvent {
                op,
                transport,
                local_ip,
                local_port,
                remote_ip,
                remote_port,
                pid,
                entity_id,
                exe,
                uid,
                netns,
                bytes_sent,
                bytes_received,
            })
        }
        5 => {
            let flags = r.uint()?;
            let user = r.str()?;
            let service = r.str()?;
            let method = r.str()?;
            let source_ip = if flags & 1 != 0 { Some(r.str()?) } else { None };
            let pid = if flags & 2 != 0 { Some(r.u32()?) } else { None };
            EventBody::Login(LoginEvent { user, source_ip, service, method, success: flags & 4 != 0, pid })
        }
        other => return Err(DecodeError(format!("unknown event kind code {other}"))),
    };
    if r.pos != body.len() {
        return Err(DecodeError(format!("{} bytes left over after the body", body.len() - r.pos)));
    }
    Ok(Event { id, time, partial, body: decoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(ancestry_shares_parent: bool) -> Event {
        Event {
            id: 1,
            time: 1_780_000_000_123_456_789,
            partial: true,
            body: EventBody::ProcessExec(ProcessExec {
                pid: 4242,
                ppid: 1,
                entity_id: u64::MAX - 3,
                parent_entity_id: 0,
                exe: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "-c".into(), "écho ü".into(), String::new()],
                cwd: "/".into(),
                uid: u32::MAX,
                gid: u32::MAX - 1,
                cgroup_id: u64::MAX,
                user: "root".into(),
                start_time: 1_780_000_000_000_000_000,
                parent_exe: "/usr/sbin/nginx".into(),
                parent_argv: vec![],
                ancestry: if ancestry_shares_parent { vec!["/usr/sbin/nginx".into(), "/sbin/init".into()] } else { vec!["/other".into()] },
            }),
        }
    }

    fn round_trip(e: &Event) {
        let mut buf = Vec::new();
        encode_body(e, &mut buf);
        assert_eq!(decode_event(e.id, e.time, e.partial, &buf).unwrap(), *e);
    }

    #[test]
    fn every_kind_round_trips_including_extremes() {
        round_trip(&exec(true));
        round_trip(&exec(false));
        let base = exec(true);
        let start_after_event = Event {
            body: match base.body.clone() {
                EventBody::ProcessExec(mut x) => {
                    x.start_time = u64::MAX;
                    EventBody::ProcessExec(x)
                }
                _ => unreachable!(),
            },
            ..base.clone()
        };
        round_trip(&start_after_event);
        for body in [
            EventBody::ProcessExit(ProcessExit { pid: 0, entity_id: u64::MAX, exit_code: i32::MIN }),
            EventBody::File(FileEvent { op: FileOp::Read, path: "/x".into(), old_path: None, mode: None, pid: None, entity_id: None, exe: None, uid: None }),
            EventBody::File(FileEvent {
                op: FileOp::Rename,
                path: "/etc/cron.d/x".into(),
                old_path: Some("/tmp/x".into()),
                mode: Some(0o104755),
                pid: Some(7),
                entity_id: Some(0),
                exe: Some("/bin/mv".into()),
                uid: Some(0),
            }),
            EventBody::Network(NetworkEvent {
                op: NetworkOp::Listen,
                transport: Transport::Udp,
                local_ip: "::".into(),
                local_port: 65535,
                remote_ip: String::new(),
                remote_port: 0,
                pid: Some(1),
                entity_id: None,
                exe: None,
                uid: Some(3),
                netns: Some(4_026_531_992),
                bytes_sent: None,
                bytes_received: None,
            }),
            EventBody::Network(NetworkEvent {
                op: NetworkOp::Close,
                transport: Transport::Tcp,
                local_ip: "127.0.0.1".into(),
                local_port: 40_000,
                remote_ip: "127.0.0.1".into(),
                remote_port: 8080,
                pid: Some(7),
                entity_id: Some(8),
                exe: Some("/usr/bin/curl".into()),
                uid: None,
                netns: None,
                bytes_sent: Some(u64::MAX),
                bytes_received: Some(0),
            }),
            EventBody::Login(LoginEvent { user: "a".into(), source_ip: None, service: "sshd".into(), method: "password".into(), success: false, pid: None }),
            EventBody::Login(LoginEvent {
                user: "b".into(),
                source_ip: Some("::1".into()),
                service: String::new(),
                method: String::new(),
                success: true,
                pid: Some(9),
            }),
        ] {
            round_trip(&Event { body, ..base.clone() });
        }
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_body(&exec(true), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_event(1, 2, false, &buf[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut newer = buf.clone();
        newer[0] = FORMAT + 1;
        let err = decode_event(1, 2, false, &newer).unwrap_err();
        assert!(err.to_string().contains("newer agent"), "{err}");
        let mut trailing = buf.clone();
        trailing.push(0);
        assert!(decode_event(1, 2, false, &trailing).unwrap_err().to_string().contains("left over"));
        assert!(decode_event(1, 2, false, &[FORMAT, 9]).unwrap_err().to_string().contains("kind code 9"));
        // A format-1 exec (before gid) still reads, with gid 0.
        let old = [1, 1, 0, 7, 1, 9, 0, 33, 0, 0, 0, 0, 0, 0, 0, 0];
        let EventBody::ProcessExec(x) = decode_event(1, 2, false, &old).unwrap().body else { panic!() };
        assert_eq!((x.pid, x.ppid, x.entity_id, x.uid, x.gid), (7, 1, 9, 33, 0));
        // A format-2 exec (gid, before the cgroup id) reads with cgroup id 0.
        let two = [2, 1, 0, 7, 1, 9, 0, 33, 44, 0, 0, 0, 0, 0, 0, 0, 0];
        let EventBody::ProcessExec(x) = decode_event(1, 2, false, &two).unwrap().body else { panic!() };
        assert_eq!((x.pid, x.uid, x.gid, x.cgroup_id), (7, 33, 44, 0));
        // A format-4 network row (netns, before the close op and the byte
        // counts) reads without bytes: connect 127.0.0.1:40000 -> :8080, pid 7, netns 99.
        let four = [
            4, 4, 0b10001, 1, 6, 9, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', 0xc0, 0xb8, 0x02, 9, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.',
            b'1', 0x90, 0x3f, 7, 99,
        ];
        let EventBody::Network(n) = decode_event(1, 2, false, &four).unwrap().body else { panic!() };
        assert_eq!((n.op, n.local_port, n.remote_port, n.pid, n.netns), (NetworkOp::Connect, 40_000, 8080, Some(7), Some(99)));
        assert_eq!((n.bytes_sent, n.bytes_received), (None, None));
        // A list count far larger than the buffer is refused before allocating.
        assert!(decode_event(1, 2, false, &[1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}
