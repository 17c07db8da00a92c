// SPDX-License-Identifier: GPL-2.0
// edr process hooks: sched_process_fork/exec/exit via tp_btf.
// No vmlinux.h: only the fields read are declared, marked for CO-RE
// relocation (preserve_access_index), so the offsets follow the running kernel.
typedef unsigned char u8;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;

typedef struct { u32 val; } kuid_t;
struct cred { kuid_t euid; } __attribute__((preserve_access_index));
struct mm_struct { unsigned long arg_start, arg_end; } __attribute__((preserve_access_index));
struct task_struct {
	s32 pid, tgid;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	const struct cred *cred;
	u64 start_boottime;
	int exit_code;
} __attribute__((preserve_access_index));
// interp: the file the kernel executed last (a script's interpreter; the
// same as filename otherwise), i.e. what /proc/<pid>/exe will name.
struct linux_binprm { const char *filename, *interp; } __attribute__((preserve_access_index));

#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, u32 size) = (void *)16;
static u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_user)(void *dst, u32 size, const void *src) = (void *)112;
static long (*bpf_probe_read_kernel_str)(void *dst, u32 size, const void *src) = (void *)115;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, u64 size, u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
static u64 (*bpf_ktime_get_boot_ns)(void) = (void *)125;

#define ARGV_MAX 1024
#define FILENAME_MAX 256
enum { EV_FORK = 1, EV_EXEC = 2, EV_EXIT = 3 };
enum { F_ARGV_TRUNC = 1, F_ARGV_FAULT = 2 };

// Keep in sync with src/wire.rs.
struct event {
	u32 kind, pid, tgid, ppid, uid, gid;
	u64 cgroup, ktime, start;
	u32 argv_len, flags;
	s32 exit_code;
	u32 euid;
	char comm[16];
	char filename[FILENAME_MAX];
	char argv[ARGV_MAX];
};

struct {
	__uint(type, 27 /* BPF_MAP_TYPE_RINGBUF */);
	__uint(max_entries, 4 << 20);
} EVENTS SEC(".maps");

struct {
	__uint(type, 6 /* BPF_MAP_TYPE_PERCPU_ARRAY */);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} LOST SEC(".maps");

static void count_lost(void)
{
	u32 k = 0;
	u64 *v = bpf_map_lookup_elem(&LOST, &k);
	if (v)
		*v += 1;
}

static struct event *start(u32 kind, struct task_struct *t)
{
	struct event *e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	u64 ug = bpf_get_current_uid_gid();
	e->kind = kind;
	e->pid = t->pid;
	e->tgid = t->tgid;
	e->ppid = t->real_parent->tgid;
	e->uid = (u32)ug;
	e->gid = ug >> 32;
	e->cgroup = bpf_get_current_cgroup_id();
	e->ktime = bpf_ktime_get_boot_ns();
	// What /proc/<pid>/stat's starttime is made of (ns since boot, CLOCK_BOOTTIME).
	e->start = t->start_boottime;
	e->euid = t->cred->euid.val;
	e->argv_len = 0;
	e->flags = 0;
	e->exit_code = 0;
	e->filename[0] = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

SEC("tp_btf/sched_process_fork")
int edr_fork(u64 *ctx)
{
	struct task_struct *child = (void *)ctx[1];
	struct event *e = start(EV_FORK, child);
	if (!e)
		return 0;
	// The fork hook runs in the parent: real_parent of the child is right,
	// but pid/tgid come from the child.
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int edr_exec(u64 *ctx)
{
	struct task_struct *t = (void *)ctx[0];
	struct linux_binprm *bprm = (void *)ctx[2];
	struct event *e = start(EV_EXEC, t);
	if (!e)
		return 0;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->interp);
	unsigned long a = t->mm->arg_start, b = t->mm->arg_end;
	u64 len = b - a;
	if (len > ARGV_MAX) {
		len = ARGV_MAX;
		e->flags |= F_ARGV_TRUNC;
	}
	if (bpf_probe_read_user(e->argv, len & (ARGV_MAX - 1 | ARGV_MAX), (void *)a) < 0)
		e->flags |= F_ARGV_FAULT;
	else
		e->argv_len = len;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int edr_exit(u64 *ctx)
{
	struct task_struct *t = (void *)ctx[0];
	// Threads exit too: report only the thread-group leader.
	if (t->pid != t->tgid)
		return 0;
	struct event *e = start(EV_EXIT, t);
	if (!e)
		return 0;
	e->exit_code = t->exit_code;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
