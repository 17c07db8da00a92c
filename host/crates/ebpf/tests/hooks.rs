//! Root tests against the real kernel: the hooks load, every exec of a burst
//! is seen with its exact argv, and ring-buffer overflow is counted.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edr_ebpf::{Hooks, Kind, ProcEvent};

/// The loaded hooks, or `None` after a recorded skip (not root, not built, refused).
fn load_or_skip() -> Option<Hooks> {
    if !edr_testkit::is_root() {
        edr_testkit::skip("needs root: loading BPF programs");
        return None;
    }
    if let Err(why) = edr_ebpf::built() {
        edr_testkit::skip(why);
        return None;
    }
    match Hooks::load() {
        Ok(h) => Some(h),
        Err(e) => {
            edr_testkit::skip(format!("eBPF hooks do not load here: {e}"));
            None
        }
    }
}

/// Hooks read on a thread from [`Recorder::start`] until [`Recorder::finish`].
struct Recorder {
    stop: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<(Vec<ProcEvent>, u64)>,
}

impl Recorder {
    /// Loads the hooks (or skips) and starts reading them.
    fn start() -> Option<Self> {
        let mut hooks = load_or_skip()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut quiet_after_stop = 0;
            loop {
                let n = hooks.poll(Duration::from_millis(50), |e| v.push(e)).expect("poll");
                if stopped.load(Ordering::SeqCst) {
                    quiet_after_stop += usize::from(n == 0);
                    if quiet_after_stop > 2 {
                        break;
                    }
                }
            }
            (v, hooks.lost())
        });
        Some(Self { stop, reader })
    }

    /// Stops reading once the ring buffer is quiet: the events and the lost count.
    fn finish(self) -> (Vec<ProcEvent>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.reader.join().unwrap()
    }
}

#[test]
fn burst_of_2000_execs_each_with_exact_argv() {
    let Some(recorder) = Recorder::start() else { return };
    let tag = format!("edrb{}", std::process::id());
    let t0 = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let tag = tag.clone();
            std::thread::spawn(move || {
                for i in (w..1700).step_by(4) {
                    Command::new("/bin/true").arg(format!("{tag}-t-{i}")).arg("").arg("two words").status().unwrap();
                }
                for i in (w..300).step_by(4) {
                    let script = format!("exec env true {tag}-c-{i}");
                    Command::new("/bin/sh").arg("-c").arg(script).status().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let spent = t0.elapsed();
    let (events, lost) = recorder.finish();
    let execs: Vec<&ProcEvent> = events.iter().filter(|e| e.kind == Kind::Exec).collect();
    let by_arg: HashMap<&str, &ProcEvent> = execs.iter().filter_map(|e| e.argv.get(1).map(|a| (a.as_str(), *e))).collect();
    let true_exe = std::fs::canonicalize("/bin/true").unwrap().to_string_lossy().into_owned();
    let mut missing = Vec::new();
    for i in 0..1700 {
        let a = format!("{tag}-t-{i}");
        match by_arg.get(a.as_str()) {
            Some(e) => {
                assert_eq!(e.argv, vec!["/bin/true".to_string(), a.clone(), String::new(), "two words".into()]);
                assert_eq!(e.filename, "/bin/true");
                assert_eq!(e.exe.as_deref(), Some(true_exe.as_str()));
                assert!(!e.argv_truncated && !e.argv_fault);
            }
            None => missing.push(a),
        }
    }
    // Each chain: sh -c ..., then env true X, then true X, all under one pid.
    let mut chains = 0;
    for i in 0..300 {
        let x = format!("{tag}-c-{i}");
        let sh = execs.iter().find(|e| e.argv.len() == 3 && e.argv[2] == format!("exec env true {x}"));
        let env = execs.iter().find(|e| e.argv == vec!["env".to_string(), "true".into(), x.clone()]);
        let tru = execs.iter().find(|e| e.argv == vec!["true".to_string(), x.clone()]);
        match (sh, env, tru) {
            (Some(s), Some(e), Some(t)) if s.tgid == e.tgid && e.tgid == t.tgid => chains += 1,
            _ => missing.push(x),
        }
    }
    eprintln!("{} execs + 300 chains in {spent:?}: {} events, lost {lost}, missing {}", 1700, events.len(), missing.len());
    assert_eq!(lost, 0, "ring buffer lost records in a 2,000-exec burst");
    assert!(missing.is_empty(), "not seen with exact argv: {:?}", &missing[..missing.len().min(10)]);
    assert_eq!(chains, 300);
}

#[test]
fn fork_and_exit_carry_pid_ppid_and_exit_code() {
    let Some(recorder) = Recorder::start() else { return };
    let child = Command::new("/bin/sh").arg("-c").arg("exit 7").spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    let (events, _) = recorder.finish();
    let me = std::process::id();
    let fork = events.iter().find(|e| e.kind == Kind::Fork && e.tgid == pid).expect("fork seen");
    assert_eq!(fork.ppid, me);
    let exec = events.iter().find(|e| e.kind == Kind::Exec && e.tgid == pid).expect("exec seen");
    assert_eq!(exec.argv, vec!["/bin/sh", "-c", "exit 7"]);
    assert_eq!(exec.ppid, me);
    assert!(exec.cgroup_id != 0);
    let exit = events.iter().find(|e| e.kind == Kind::Exit && e.tgid == pid).expect("exit seen");
    assert_eq!(exit.exit_code >> 8, 7);
}

#[test]
fn long_argv_is_cut_and_flagged() {
    let Some(recorder) = Recorder::start() else { return };
    let long = format!("edrlong{}{}", std::process::id(), "x".repeat(5000));
    Command::new("/bin/true").arg(&long).status().unwrap();
    let (events, _) = recorder.finish();
    let e = events.iter().find(|e| e.kind == Kind::Exec && e.argv.get(1).is_some_and(|a| a.starts_with(&long[..20]))).expect("long exec seen");
    assert!(e.argv_truncated);
    assert_eq!(e.argv.iter().map(|a| a.len() + 1).sum::<usize>(), edr_ebpf::wire::ARGV_MAX + 1);
}

#[test]
fn ring_buffer_overflow_is_counted_per_cpu() {
    let Some(hooks) = load_or_skip() else { return };
    // Nobody reads: a process takes 2 x 96 B (fork, exit) + 2,912 B (exec),
    // 4 MiB holds about 1,360 of them; 2,000 overflow it.
    for _ in 0..2000 {
        Command::new("/bin/true").status().unwrap();
    }
    let per_cpu = hooks.lost_per_cpu();
    eprintln!("lost per CPU: {per_cpu:?}");
    assert!(hooks.lost() > 1000, "overflow not counted: {per_cpu:?}");
    assert_eq!(per_cpu.len(), std::thread::available_parallelism().unwrap().get().max(per_cpu.len()));
}

/// `/proc/<pid>/stat` field 22 (starttime, clock ticks since boot).
fn proc_start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn start_time_matches_procfs_and_script_exec_names_its_interpreter() {
    let Some(recorder) = Recorder::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("edr-interp.sh");
    std::fs::write(&script, "#!/bin/sh\nsleep 2\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new(&script).spawn().unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let ticks = proc_start_ticks(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    let (events, _) = recorder.finish();
    let exec = events.iter().find(|e| e.kind == Kind::Exec && e.tgid == pid).expect("exec seen");
    // USER_HZ is 100 on every Linux ABI we run on.
    assert_eq!(exec.start_ns / 10_000_000, ticks, "BPF start_boottime and /proc starttime name different starts");
    let fork = events.iter().find(|e| e.kind == Kind::Fork && e.tgid == pid).expect("fork seen");
    assert_eq!(fork.start_ns, exec.start_ns, "exec keeps the process's start time");
    assert_eq!(exec.filename, "/bin/sh", "a script's exec names the interpreter the kernel ran");
    assert_eq!(exec.argv[0], "/bin/sh");
    assert_eq!((exec.euid, exec.egid), (0, 0));
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(exec.exe.as_deref(), Some(sh.to_str().unwrap()), "the exe as /proc/<pid>/exe names it, from the hook");
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(exec.cwd.as_deref(), Some(cwd.to_str().unwrap()));
}
