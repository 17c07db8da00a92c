// SPDX-License-Identifier: GPL-2.0
// edr process hooks: sched_process_fork/exec/exit via tp_btf.
// No vmlinux.h: only the fields read are declared, marked for CO-RE
// relocation (preserve_access_index), so the offsets follow the running kernel.
typedef unsigned char u8;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;

#define PAI __attribute__((preserve_access_index))
typedef struct { u32 val; } kuid_t;
typedef struct { u32 val; } kgid_t;
struct cred { kuid_t euid; kgid_t egid; } PAI;
struct mm_struct { unsigned long arg_start, arg_end; } PAI;
struct qstr { const unsigned char *name; } PAI;
struct hlist_bl_node { void *next, **pprev; } PAI;
struct dentry { struct dentry *d_parent; struct qstr d_name; struct hlist_bl_node d_hash; } PAI;
struct vfsmount { struct dentry *mnt_root; } PAI;
struct mount { struct mount *mnt_parent; struct dentry *mnt_mountpoint; struct vfsmount mnt; } PAI;
struct path { struct vfsmount *mnt; struct dentry *dentry; } PAI;
struct fs_struct { struct path pwd; } PAI;
struct file { struct path f_path; } PAI;
struct task_struct {
	s32 pid, tgid;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	struct fs_struct *fs;
	const struct cred *cred;
	u64 start_boottime;
	int exit_code;
} PAI;
// interp: the file the kernel executed last (a script's interpreter; the
// same as filename otherwise); file: the open file of that, whose path is
// what /proc/<pid>/exe names.
struct linux_binprm { struct file *file; const char *filename, *interp; } PAI;

#define SEC(n) __attribute__((section(n), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, u32 size) = (void *)16;
static u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_user)(void *dst, u32 size, const void *src) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *src) = (void *)113;
static long (*bpf_probe_read_kernel_str)(void *dst, u32 size, const void *src) = (void *)115;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, u64 size, u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
static u64 (*bpf_ktime_get_boot_ns)(void) = (void *)125;
static long (*bpf_loop)(u32 nr_loops, void *callback_fn, void *callback_ctx, u64 flags) = (void *)181;

#define ARGV_MAX 1024
#define FILENAME_MAX 256
// A path is written leaf first, one NUL-terminated name after the other,
// into PATH_BUF bytes; a name starts below PATH_MAX and may take NAME_MAX.
#define PATH_MAX 512
#define NAME_MAX 256
#define PATH_BUF (PATH_MAX + NAME_MAX)
#define PATH_DEPTH 48
enum { EV_FORK = 1, EV_EXEC = 2, EV_EXIT = 3 };
enum { F_ARGV_TRUNC = 1, F_ARGV_FAULT = 2, F_EXE_CUT = 4, F_EXE_DELETED = 8, F_CWD_CUT = 16 };

// Keep in sync with src/wire.rs. Fork and exit send the head alone.
struct head {
	u32 kind, pid, tgid, ppid, uid, gid;
	u64 cgroup, ktime, start;
	u32 argv_len, flags;
	s32 exit_code;
	u32 euid;
	u32 exe_len, cwd_len;
	u32 egid, _pad;
	char comm[16];
};

struct exec_event {
	struct head h;
	char filename[FILENAME_MAX];
	char argv[ARGV_MAX];
	char exe[PATH_BUF];
	char cwd[PATH_BUF];
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

static struct head *start(u32 kind, struct task_struct *t, u64 size)
{
	struct head *e = bpf_ringbuf_reserve(&EVENTS, size, 0);
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
	e->egid = t->cred->egid.val;
	e->_pad = 0;
	e->argv_len = 0;
	e->flags = 0;
	e->exit_code = 0;
	e->exe_len = 0;
	e->cwd_len = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

#define RD(dst, addr) bpf_probe_read_kernel(&(dst), sizeof(dst), (addr))

// Paths are walked into per-CPU scratch (a loop writing into the ring
// buffer record would need the verifier to follow every iteration), then
// copied into the record.
struct scratch {
	char path[2][PATH_BUF];
};

struct {
	__uint(type, 6 /* BPF_MAP_TYPE_PERCPU_ARRAY */);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct scratch);
} SCRATCH SEC(".maps");

// One walk: where it is, where it writes. Pointers are kept as numbers:
// they are only ever read through bpf_probe_read_kernel.
struct walk {
	u64 d, vm, m, mnt_off;
	u32 which, off, cut, _pad;
};

// One step of the walk from a dentry up to the root of its mount
// namespace (bpf_loop callback; 0 = go on, 1 = done). Writes the names
// leaf first, each with its NUL. Crossing a mount root continues at the
// mountpoint in the parent mount. A dentry that is its own parent without
// being a mount root (a memfd, a pipe) is written as its name alone.
static long walk_step(u64 i, void *ctx)
{
	struct walk *w = ctx;
	struct dentry *d = (void *)w->d;
	struct vfsmount *vm = (void *)w->vm;
	struct mount *m = (void *)w->m;
	struct dentry *root = 0, *parent = 0;
	RD(root, &vm->mnt_root);
	if (d == root) {
		struct mount *up = 0;
		RD(up, &m->mnt_parent);
		if (up == m || !up)
			return 1;
		RD(d, &m->mnt_mountpoint);
		w->d = (u64)d;
		w->m = (u64)up;
		w->vm = (u64)up + w->mnt_off;
		return 0;
	}
	u32 k = 0;
	struct scratch *s = bpf_map_lookup_elem(&SCRATCH, &k);
	if (!s)
		return 1;
	u32 off = w->off;
	if (off >= PATH_MAX) {
		w->cut = 1;
		return 1;
	}
	const unsigned char *name = 0;
	RD(parent, &d->d_parent);
	RD(name, &d->d_name.name);
	long n = bpf_probe_read_kernel_str(&s->path[w->which & 1][off & (PATH_MAX - 1)], NAME_MAX, name);
	if (n <= 0) {
		w->cut = 1;
		return 1;
	}
	w->off = off + n;
	if (parent == d || !parent)
		return 1;
	w->d = (u64)parent;
	return 0;
}

// Walks the path (d on vm) into scratch slot `which` and copies it to
// out; returns the bytes used, sets *cut when deeper or longer than we copy.
static __attribute__((always_inline)) u32 walk_path(struct dentry *d, struct vfsmount *vm, u32 which, char *out, u32 *cut)
{
	u64 mnt_off = __builtin_preserve_field_info(((struct mount *)0)->mnt, 0 /* BPF_FIELD_BYTE_OFFSET */);
	struct walk w = { .d = (u64)d, .vm = (u64)vm, .m = (u64)vm - mnt_off, .mnt_off = mnt_off, .which = which };
	long steps = bpf_loop(PATH_DEPTH, walk_step, &w, 0);
	if (steps >= PATH_DEPTH && !w.cut)
		w.cut = 1; // still going after PATH_DEPTH names
	u32 k = 0;
	struct scratch *s = bpf_map_lookup_elem(&SCRATCH, &k);
	if (!s) {
		*cut = 1;
		return 0;
	}
	bpf_probe_read_kernel(out, PATH_BUF, s->path[which & 1]);
	*cut = w.cut;
	return w.off;
}

SEC("tp_btf/sched_process_fork")
int edr_fork(u64 *ctx)
{
	struct task_struct *child = (void *)ctx[1];
	struct head *e = start(EV_FORK, child, sizeof(struct head));
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
	struct exec_event *e = (void *)start(EV_EXEC, t, sizeof(struct exec_event));
	if (!e)
		return 0;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->interp);
	unsigned long a = t->mm->arg_start, b = t->mm->arg_end;
	u64 len = b - a;
	if (len > ARGV_MAX) {
		len = ARGV_MAX;
		e->h.flags |= F_ARGV_TRUNC;
	}
	if (bpf_probe_read_user(e->argv, len & (ARGV_MAX - 1 | ARGV_MAX), (void *)a) < 0)
		e->h.flags |= F_ARGV_FAULT;
	else
		e->h.argv_len = len;
	u32 cut = 0;
	struct dentry *exe = bprm->file->f_path.dentry;
	e->h.exe_len = walk_path(exe, bprm->file->f_path.mnt, 0, e->exe, &cut);
	if (cut)
		e->h.flags |= F_EXE_CUT;
	// d_unlinked(): unhashed and not a root. /proc adds " (deleted)" then.
	void *hashed = 0;
	RD(hashed, &exe->d_hash.pprev);
	if (!hashed)
		e->h.flags |= F_EXE_DELETED;
	cut = 0;
	struct fs_struct *fs = t->fs;
	e->h.cwd_len = walk_path(fs->pwd.dentry, fs->pwd.mnt, 1, e->cwd, &cut);
	if (cut)
		e->h.flags |= F_CWD_CUT;
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
	struct head *e = start(EV_EXIT, t, sizeof(struct head));
	if (!e)
		return 0;
	e->exit_code = t->exit_code;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
