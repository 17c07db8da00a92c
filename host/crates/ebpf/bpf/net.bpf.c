// SPDX-License-Identifier: GPL-2.0
// edr TCP hooks: every TCP connection from tp_btf/inet_sock_set_state, plus
// fexit/inet_csk_accept for the accepting pid where the kernel allows fexit.
// No vmlinux.h: only the fields read are declared, marked for CO-RE
// relocation (preserve_access_index), so the offsets follow the running kernel.
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;

struct in6_addr { u8 s6[16]; } __attribute__((preserve_access_index));
struct ns_common { unsigned int inum; } __attribute__((preserve_access_index));
struct net { struct ns_common ns; } __attribute__((preserve_access_index));
typedef struct { struct net *net; } __attribute__((preserve_access_index)) possible_net_t;
// The kernel nests these in anonymous unions/structs; CO-RE matches by name.
struct sock_common {
	u32 skc_daddr, skc_rcv_saddr;
	u16 skc_dport, skc_num;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr, skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock { struct sock_common __sk_common; u16 sk_protocol; } __attribute__((preserve_access_index));
struct tcp_sock { u64 bytes_received, bytes_acked; } __attribute__((preserve_access_index));

#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, u32 size) = (void *)16;
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *src) = (void *)113;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, u64 size, u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
static u64 (*bpf_ktime_get_boot_ns)(void) = (void *)125;

enum { AF_INET = 2, AF_INET6 = 10, IPPROTO_TCP = 6 };
enum { TCP_ESTABLISHED = 1, TCP_SYN_SENT = 2, TCP_SYN_RECV = 3, TCP_CLOSE = 7, TCP_LISTEN = 10 };
enum { EV_CONNECT = 1, EV_ACCEPT = 2, EV_CLOSE = 3, EV_LISTEN = 4 };
// Where the pid of a record comes from (keep in sync with src/net.rs).
enum { FROM_UNKNOWN = 0, FROM_CONNECT = 1, FROM_LISTENER = 2, FROM_ACCEPT = 3 };

// Keep in sync with src/net.rs.
struct net_event {
	u32 kind, pid, tgid, uid;
	u64 ktime, netns, bytes_sent, bytes_received;
	u16 family, sport, dport, from;
	u8 saddr[16], daddr[16];
	char comm[16];
	u32 old_state, pad;
};

// Who owns a socket: the task that connected, listened or accepted.
struct owner {
	u32 pid, tgid, uid, from;
	char comm[16];
};

// Both ends, as the socket had them at ESTABLISHED: by TCP_CLOSE an
// ephemeral local port is already released (inet_put_port zeroes skc_num).
struct tuple {
	u16 family, sport, dport, set;
	u8 saddr[16], daddr[16];
};

// What OWNERS keeps per socket.
struct conn {
	struct owner o;
	struct tuple t;
};

// An accepted socket has its listener's family, netns and local port.
struct listen_key {
	u64 netns;
	u16 port, family;
	u32 pad;
};

// The listening socket (so closing one of several SO_REUSEPORT listeners
// keeps the entry of the others) and the task that called listen().
struct listener {
	struct owner o;
	u64 sk;
};

struct {
	__uint(type, 27 /* BPF_MAP_TYPE_RINGBUF */);
	__uint(max_entries, 1 << 20);
} NET_EVENTS SEC(".maps");

struct {
	__uint(type, 6 /* BPF_MAP_TYPE_PERCPU_ARRAY */);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} NET_LOST SEC(".maps");

// Socket pointer -> owner, from SYN_SENT (connect) or accept until CLOSE.
struct {
	__uint(type, 9 /* BPF_MAP_TYPE_LRU_HASH */);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, struct conn);
} OWNERS SEC(".maps");

// (netns, local port, family) of a listening socket -> the task that called listen().
struct {
	__uint(type, 9 /* BPF_MAP_TYPE_LRU_HASH */);
	__uint(max_entries, 8192);
	__type(key, struct listen_key);
	__type(value, struct listener);
} LISTENERS SEC(".maps");

// [0] = 1 when fexit/inet_csk_accept is attached: it emits ACCEPT, not the
// state hook. Written by user space after the attach.
struct {
	__uint(type, 2 /* BPF_MAP_TYPE_ARRAY */);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} NET_CONFIG SEC(".maps");

static void count_lost(void)
{
	u32 k = 0;
	u64 *v = bpf_map_lookup_elem(&NET_LOST, &k);
	if (v)
		*v += 1;
}

static void current_owner(struct owner *o, u32 from)
{
	u64 pt = bpf_get_current_pid_tgid();
	o->pid = (u32)pt;
	o->tgid = pt >> 32;
	o->uid = (u32)bpf_get_current_uid_gid();
	o->from = from;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static u64 netns_of(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

static void read_tuple(const struct sock *sk, struct tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->set = 1;
	t->family = sk->__sk_common.skc_family;
	t->sport = sk->__sk_common.skc_num;
	u16 d = sk->__sk_common.skc_dport;
	t->dport = (u16)(d << 8 | d >> 8);
	if (t->family == AF_INET6) {
		bpf_probe_read_kernel(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		u32 a = sk->__sk_common.skc_rcv_saddr, b = sk->__sk_common.skc_daddr;
		__builtin_memcpy(t->saddr, &a, 4);
		__builtin_memcpy(t->daddr, &b, 4);
	}
}

// Emits one record about `sk`. `o` may be null (owner unknown); `t` is the
// tuple remembered at ESTABLISHED, or null to read it from `sk` now.
static void emit(u32 kind, const struct sock *sk, const struct owner *o, const struct tuple *t, int old)
{
	struct net_event *e = bpf_ringbuf_reserve(&NET_EVENTS, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->old_state = old;
	if (o) {
		e->pid = o->pid;
		e->tgid = o->tgid;
		e->uid = o->uid;
		e->from = o->from;
		__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	}
	e->ktime = bpf_ktime_get_boot_ns();
	e->netns = netns_of(sk);
	struct tuple now;
	if (!t || !t->set) {
		read_tuple(sk, &now);
		t = &now;
	}
	e->family = t->family;
	e->sport = t->sport;
	e->dport = t->dport;
	__builtin_memcpy(e->saddr, t->saddr, 16);
	__builtin_memcpy(e->daddr, t->daddr, 16);
	if (kind == EV_CLOSE) {
		const struct tcp_sock *tp = (const void *)sk;
		bpf_probe_read_kernel(&e->bytes_sent, 8, &tp->bytes_acked);
		bpf_probe_read_kernel(&e->bytes_received, 8, &tp->bytes_received);
	}
	bpf_ringbuf_submit(e, 0);
}

// Remembers `o` (or keeps the owner already there when `o` is null) with
// the tuple of `sk` now; returns the entry.
static struct conn *remember(const struct sock *sk, u64 key, const struct owner *o)
{
	struct conn *c = bpf_map_lookup_elem(&OWNERS, &key);
	if (c) {
		if (o)
			c->o = *o;
		read_tuple(sk, &c->t);
		return c;
	}
	struct conn n;
	__builtin_memset(&n, 0, sizeof(n));
	if (o)
		n.o = *o;
	read_tuple(sk, &n.t);
	bpf_map_update_elem(&OWNERS, &key, &n, 0);
	return bpf_map_lookup_elem(&OWNERS, &key);
}

static int accept_by_fexit(void)
{
	u32 k = 0;
	u64 *v = bpf_map_lookup_elem(&NET_CONFIG, &k);
	return v && *v;
}

static void listen_key_of(const struct sock *sk, struct listen_key *lk)
{
	__builtin_memset(lk, 0, sizeof(*lk));
	lk->netns = netns_of(sk);
	lk->port = sk->__sk_common.skc_num;
	lk->family = sk->__sk_common.skc_family;
}

// Listener (netns, port, family) -> owner; on LISTEN in process context (listen()).
static void on_listen(const struct sock *sk, u64 key, int open)
{
	struct listen_key lk;
	listen_key_of(sk, &lk);
	if (open) {
		struct listener l;
		current_owner(&l.o, FROM_LISTENER);
		l.sk = key;
		bpf_map_update_elem(&LISTENERS, &lk, &l, 0);
		emit(EV_LISTEN, sk, &l.o, 0, TCP_CLOSE);
		return;
	}
	struct listener *l = bpf_map_lookup_elem(&LISTENERS, &lk);
	if (l && l->sk == key)
		bpf_map_delete_elem(&LISTENERS, &lk);
}

// SYN_RECV -> ESTABLISHED runs in softirq: the owner is the listener's.
static void on_passive_established(const struct sock *sk, u64 key)
{
	struct listen_key lk;
	listen_key_of(sk, &lk);
	struct listener *l = bpf_map_lookup_elem(&LISTENERS, &lk);
	struct conn *c = remember(sk, key, l ? &l->o : 0);
	if (!accept_by_fexit())
		emit(EV_ACCEPT, sk, l ? &l->o : 0, c ? &c->t : 0, TCP_SYN_RECV);
}

static void on_close(const struct sock *sk, u64 key, int old)
{
	struct conn *c = bpf_map_lookup_elem(&OWNERS, &key);
	if (c && c->o.from)
		emit(EV_CLOSE, sk, &c->o, &c->t, old);
	else
		emit(EV_CLOSE, sk, 0, c ? &c->t : 0, old);
	bpf_map_delete_elem(&OWNERS, &key);
}

SEC("tp_btf/inet_sock_set_state")
int edr_tcp_state(u64 *ctx)
{
	const struct sock *sk = (void *)ctx[0];
	int old = (int)ctx[1], new = (int)ctx[2];
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	u64 key = (u64)sk;
	if (new == TCP_SYN_SENT) {
		// connect(2): the only transition that runs in the owner's context.
		struct conn c;
		__builtin_memset(&c, 0, sizeof(c));
		current_owner(&c.o, FROM_CONNECT);
		bpf_map_update_elem(&OWNERS, &key, &c, 0);
	} else if (new == TCP_LISTEN) {
		on_listen(sk, key, 1);
	} else if (new == TCP_ESTABLISHED && old == TCP_SYN_SENT) {
		struct conn *c = remember(sk, key, 0);
		emit(EV_CONNECT, sk, c && c->o.from ? &c->o : 0, c ? &c->t : 0, old);
	} else if (new == TCP_ESTABLISHED && old == TCP_SYN_RECV) {
		on_passive_established(sk, key);
	} else if (new == TCP_CLOSE && old == TCP_LISTEN) {
		on_listen(sk, key, 0);
	} else if (new == TCP_CLOSE) {
		on_close(sk, key, old);
	}
	return 0;
}

// struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)
// (two arguments since 6.10): ctx[2] is the return value, the new socket,
// and this runs in the accepting task.
SEC("fexit/inet_csk_accept")
int edr_tcp_accept(u64 *ctx)
{
	const struct sock *sk = (void *)ctx[2];
	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	u64 key = (u64)sk;
	struct owner o;
	current_owner(&o, FROM_ACCEPT);
	struct conn *c = remember(sk, key, &o);
	emit(EV_ACCEPT, sk, &o, c ? &c->t : 0, TCP_ESTABLISHED);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
