//! Mode `ebpf` for TCP: the edr-ebpf hooks (`tp_btf/inet_sock_set_state`)
//! report every connection as it happens, however short, with the owning
//! pid from the kernel, in every network namespace. UDP stays on the
//! `/proc/net` poller (the hooks are TCP only).
//!
//! Events: the hooks' CONNECT, ACCEPT and LISTEN become [`NetworkOp`]
//! `connect`, `accept` and `listen`, as the poller emits them; so does the
//! CLOSE of a connection attempt that never got established (refused: the
//! poller reports a socket first seen in SYN_SENT as `connect` too). Other
//! CLOSEs (bytes sent and received) have no place in the event model yet
//! and are dropped.
//! An accepted connection carries the pid of the task that listened on the
//! port when fexit is refused (as on this kernel), else the accepting task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use edr_ebpf::{NetEvent, NetHooks, NetKind, PidFrom};
use edr_event::{EventBody, NetworkEvent, NetworkOp, Transport};

use crate::attribute::attribute;
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

/// The op an event of the hooks stands for (`None`: not an event of the model).
pub(crate) fn op_of(e: &NetEvent) -> Option<NetworkOp> {
    match e.kind {
        NetKind::Connect => Some(NetworkOp::Connect),
        NetKind::Accept => Some(NetworkOp::Accept),
        NetKind::Listen => Some(NetworkOp::Listen),
        NetKind::Close if e.failed_connect() => Some(NetworkOp::Connect),
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
    let ev = NetworkEvent {
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
    };
    sink.emit(EventBody::Network(ev), partial);
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
        assert_eq!(op(NetKind::Close, 1), None, "a normal close is not an event of the model");
        assert_eq!(op(NetKind::Close, 2), Some(NetworkOp::Connect), "a refused attempt is a connect, as the poller reports it");
        assert_eq!(pid_of(&ev(NetKind::Connect, PidFrom::Connect, 42)), Some(42));
        assert_eq!(pid_of(&ev(NetKind::Accept, PidFrom::Listener, 42)), Some(42));
        assert_eq!(pid_of(&ev(NetKind::Connect, PidFrom::Unknown, 0)), None);
        assert_eq!(pid_of(&ev(NetKind::Connect, PidFrom::Connect, 0)), None);
    }
}
