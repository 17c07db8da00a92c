//! Mode `ebpf` for TCP: the edr-ebpf hooks (`tp_btf/inet_sock_set_state`)
//! report every connection as it happens, however short, with the owning
//! pid from the kernel, in every network namespace. UDP stays on the
//! `/proc/net` poller (the hooks are TCP only).
//!
//! Events: the hooks' CONNECT, ACCEPT and LISTEN become [`NetworkOp`]
//! `connect`, `accept` and `listen`, as the poller emits them; so does the
//! CLOSE of a connection attempt that never got established (refused: the
//! poller reports a socket first seen in SYN_SENT as `connect` too). The
//! CLOSE of an established connection (it left ESTABLISHED or one of the
//! states after it) is a `close` with both ends, the owner, and the bytes
//! sent and received (TCP sequence space, see [`NetEvent::bytes_sent`]). A
//! CLOSE from any other state (SYN_RECV: a handshake reset before it was
//! accepted, never reported as a connection) is dropped.
//! An accepted connection carries the pid of the task that listened on the
//! port when fexit is refused (as on this kernel), else the accepting task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use edr_ebpf::{NetEvent, NetHooks, NetKind, PidFrom};
use edr_event::{EventBody, NetworkEvent, NetworkOp, Transport};

use crate::attribute::{attribute, Attribution};
use crate::sink::Sink;
use crate::{CollectError, Ctx};

/// Environment variable: `0` makes `auto` skip eBPF (the poller does TCP too).
pub(crate) const ENV_SWITCH: &str = "EDR_NETWORK_EBPF";

/// Whether `auto` may try eBPF (not disabled by [`ENV_SWITCH`]` = 0`).
pub(crate) fn allowed_by_env() -> bool {
    std::env::var(ENV_SWITCH).map_or(true, |v| v.trim() != "0")
}

/// Loads the TCP hooks; `Err` says why they are not available here.
pub(crate) fn load() -> Result<NetHooks, String> {
    NetHooks::load().map_err(|e| format!("eBPF TCP hooks: {e}"))
}

/// The mode string part for TCP.
pub(crate) fn describe(hooks: &NetHooks) -> String {
    format!("ebpf tcp ({})", hooks.describe())
}

/// Reads the hooks on their own thread until the collectors stop.
pub(crate) fn spawn(mut hooks: NetHooks, ctx: &Arc<Ctx>, sink: Sink) -> Result<Vec<JoinHandle<()>>, CollectError> {
    let ctx = ctx.clone();
    crate::process::spawn("network-ebpf", move || {
        let mut lost_seen = 0;
        while !ctx.stopping() {
            if let Err(e) = hooks.poll(Duration::from_millis(100), |e| emit(&ctx, &sink, &e)) {
                tracing::warn!(error = %e, "eBPF TCP hooks: poll failed; TCP events stop");
                break;
            }
            // The per-CPU loss counters only grow: add what is new.
            let lost = hooks.lost();
            if lost > lost_seen {
                sink.counters.lost.fetch_add(lost - lost_seen, Ordering::Relaxed);
                sink.counters.overflows.fetch_add(1, Ordering::Relaxed);
                lost_seen = lost;
            }
        }
    })
}

/// Kernel TCP states a connection is in once established (ESTABLISHED,
/// FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING): a CLOSE
/// from one of them ends a connection that was reported.
const ESTABLISHED_STATES: [u8; 7] = [1, 4, 5, 6, 8, 9, 11];

/// The op an event of the hooks stands for (`None`: not an event of the model).
pub(crate) fn op_of(e: &NetEvent) -> Option<NetworkOp> {
    match e.kind {
        NetKind::Connect => Some(NetworkOp::Connect),
        NetKind::Accept => Some(NetworkOp::Accept),
        NetKind::Listen => Some(NetworkOp::Listen),
        NetKind::Close if e.failed_connect() => Some(NetworkOp::Connect),
        NetKind::Close if ESTABLISHED_STATES.contains(&e.old_state) => Some(NetworkOp::Close),
        NetKind::Close => None,
    }
}

/// The owning process, when the hooks know it.
pub(crate) fn pid_of(e: &NetEvent) -> Option<u32> {
    (e.pid_from != PidFrom::Unknown && e.tgid != 0).then_some(e.tgid)
}

fn emit(ctx: &Ctx, sink: &Sink, e: &NetEvent) {
    let Some(op) = op_of(e) else { return };
    let pid = pid_of(e);
    if pid.is_some_and(|p| ctx.exclude_pids.contains(&p)) {
        return;
    }
    let who = pid.map(|p| attribute(ctx, p)).unwrap_or_default();
    let partial = pid.is_none() || !who.complete();
    sink.emit(EventBody::Network(network_event(op, e, pid, who)), partial);
}

/// The model's event for a record of the hooks (`op` from [`op_of`]): byte
/// counts on a `close` only.
fn network_event(op: NetworkOp, e: &NetEvent, pid: Option<u32>, who: Attribution) -> NetworkEvent {
    NetworkEvent {
        op,
        transport: Transport::Tcp,
        local_ip: e.saddr.to_string(),
        local_port: e.sport,
        remote_ip: e.daddr.to_string(),
        remote_port: e.dport,
        pid,
        entity_id: who.entity_id,
        exe: who.exe,
        uid: pid.map(|_| e.uid),
        netns: Some(e.netns),
        bytes_sent: (op == NetworkOp::Close).then_some(e.bytes_sent),
        bytes_received: (op == NetworkOp::Close).then_some(e.bytes_received),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_ebpf::Family;

    fn ev(kind: NetKind, pid_from: PidFrom, tgid: u32) -> NetEvent {
        NetEvent {
            kind,
            pid: tgid,
            tgid,
            uid: 0,
            comm: String::new(),
            pid_from,
            family: Family::V4,
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 1,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 2,
            netns: 1,
            bytes_sent: 0,
            bytes_received: 0,
            boot_ns: 0,
            old_state: 0,
        }
    }

    #[test]
    fn kinds_map_to_the_poller_ops_and_unknown_owners_have_no_pid() {
        let op = |kind, old_state| op_of(&NetEvent { old_state, ..ev(kind, PidFrom::Connect, 1) });
        assert_eq!(op(NetKind::Connect, 2), Some(NetworkOp::Connect));
        assert_eq!(op(NetKind::Accept, 3), Some(NetworkOp::Accept));
        assert_eq!(op(NetKind::Listen, 7), Some(NetworkOp::Listen));
        for established in [1, 4, 5, 6, 8, 9, 11] {
            assert_eq!(op(NetKind::Close, established), Some(NetworkOp::Close), "a close from state {established}");
        }
        assert_eq!(op(NetKind::Close, 2), Some(NetworkOp::Connect), "a refused attempt is a connect, as the poller reports it");
        assert_eq!(pid_of(&ev(NetKind::Connect, PidFrom::Connect, 42)), Some(42));
        assert_eq!(pid_of(&ev(NetKind::Accept, PidFrom::Listener, 42)), Some(42));
        assert_eq!(pid_of(&ev(NetKind::Connect, PidFrom::Unknown, 0)), None);
        assert_eq!(pid_of(&ev(NetKind::Connect, PidFrom::Connect, 0)), None);
    }

    /// Hostile and edge records: a close that ends no reported connection
    /// (SYN_RECV: reset before accept; CLOSE, LISTEN, NEW_SYN_RECV, a state
    /// the kernel does not have, a clamped garbage state) is not a `close`,
    /// and a failed connect stays a `connect` without bytes whatever the
    /// record's byte fields say.
    #[test]
    fn closes_that_end_no_reported_connection_are_not_closes() {
        let bytes = |kind, old_state| NetEvent { old_state, bytes_sent: 1, bytes_received: 9, ..ev(kind, PidFrom::Unknown, 0) };
        for state in [0, 3, 7, 10, 12, 13, 200, u8::MAX] {
            assert_eq!(op_of(&bytes(NetKind::Close, state)), None, "a close from state {state}");
        }
        let refused = bytes(NetKind::Close, 2);
        assert!(refused.failed_connect());
        assert_eq!(op_of(&refused), Some(NetworkOp::Connect));
        let n = network_event(NetworkOp::Connect, &refused, None, Attribution::default());
        assert_eq!((n.op, n.bytes_sent, n.bytes_received), (NetworkOp::Connect, None, None), "a failed connect has no byte counts");
        let closed = NetEvent { sport: 40_000, dport: 8080, ..bytes(NetKind::Close, 8) };
        let n = network_event(NetworkOp::Close, &closed, Some(5), Attribution::default());
        assert_eq!((n.local_port, n.remote_port, n.pid, n.bytes_sent, n.bytes_received), (40_000, 8080, Some(5), Some(1), Some(9)));
    }
}
