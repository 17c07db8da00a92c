//! Suspicious process lineage.
//!
//! * A network service (web server, application server, database) or an
//!   office suite spawning a shell: the classic sign of a web shell or an
//!   exploited service (ATT&CK T1505.003, T1190, T1059.004).
//! * A shell spawned by a program that is not meant to start one but can
//!   (awk, find, vim, less, man, ...): a GTFOBins shell escape, used to break
//!   out of restricted shells or sudo rules (T1059.004, T1548.003).
//! * A shell spawned by an interpreter one-liner (`python -c`, `perl -e`,
//!   `ruby -e`, `php -r`, `lua -e`): how most scripted footholds start a
//!   shell (T1059.004, T1059.006).
//!
//! Settings:
//! * `extra_services`: comma-separated program names to treat as services.
//! * `ignore_parents`: comma-separated parent names never to report.

use edr_sdk::prelude::*;

const AUTHOR: &str = "edr project";

const SERVICE_SHELL: Rule = Rule {
    id: "edr.lineage.service-spawned-shell",
    title: "Network service or office program spawned a shell",
    severity: Severity::High,
    techniques: &["T1505.003", "T1190", "T1059.004"],
    author: AUTHOR,
    description: "A web server, application server, database or office program started a shell. \
                  Services do not normally run shells; this is how web shells and exploited services execute commands.",
};

const SHELL_ESCAPE: Rule = Rule {
    id: "edr.lineage.shell-escape",
    title: "Shell spawned by a program that can escape to a shell",
    severity: Severity::Medium,
    techniques: &["T1059.004", "T1548.003"],
    author: AUTHOR,
    description: "A shell was started by awk, find, vim, less, man or a similar program (GTFOBins shell escape), \
                  often used to break out of restricted shells or abuse sudo rules.",
};

const ONE_LINER_SHELL: Rule = Rule {
    id: "edr.lineage.interpreter-one-liner-shell",
    title: "Shell spawned by an interpreter one-liner",
    severity: Severity::Medium,
    techniques: &["T1059.004", "T1059.006"],
    author: AUTHOR,
    description: "A shell was started by python -c, perl -e, ruby -e, php -r or lua -e: inline code spawning a shell.",
};

/// Programs that serve the network (or open documents) and should not start shells.
const SERVICES: &[&str] = &[
    "nginx",
    "apache2",
    "httpd",
    "lighttpd",
    "caddy",
    "traefik",
    "haproxy",
    "php-fpm",
    "php-cgi",
    "uwsgi",
    "gunicorn",
    "tomcat",
    "catalina.sh",
    "jetty",
    "node",
    "mysqld",
    "mariadbd",
    "postgres",
    "postmaster",
    "redis-server",
    "mongod",
    "memcached",
    "couchdb",
    "elasticsearch",
    "soffice.bin",
    "soffice",
    "libreoffice",
    "oosplash",
    "evince",
    "smbd",
    "vsftpd",
    "proftpd",
    "named",
    "dovecot",
    "exim4",
    "postfix",
    "sendmail",
];

/// Programs with a shell-escape feature that do not normally start shells.
const ESCAPERS: &[&str] = &[
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "find",
    "vim",
    "vi",
    "nvim",
    "view",
    "rvim",
    "less",
    "more",
    "man",
    "ed",
    "gdb",
    "nmap",
    "ftp",
    "tftp",
    "zip",
    "tar",
    "rsync",
    "expect",
    "script",
    "strace",
    "ltrace",
    "busctl",
    "journalctl",
    "systemctl",
    "mysql",
    "sqlite3",
    "git",
    "dmesg",
    "flock",
    "ionice",
    "nice",
    "taskset",
    "timeout",
    "xargs",
];

/// Interpreters and the flag that introduces inline code.
const ONE_LINERS: &[(&str, &[&str])] =
    &[("python", &["-c"]), ("perl", &["-e", "-E"]), ("ruby", &["-e"]), ("php", &["-r"]), ("lua", &["-e"]), ("node", &["-e", "--eval"])];

/// Whether a shell started with `argv` hands its user a shell, which is
/// what a shell escape is for: an interactive shell (no `-c`, reading its
/// terminal or stdin, or `-i`/`-p`), or `-c` whose command is itself a bare
/// shell (`sh -c /bin/sh`, `sh -c 'exec bash -i'`). A program running one
/// command through `sh -c` (tar's `sh -c gzip`, git's hooks, find's
/// `-exec sh -c '...'`, xargs) is how those programs work, not an escape.
fn gives_a_shell(argv: Strs<'_>) -> bool {
    let argv: Vec<&str> = argv.iter().collect();
    let flags: Vec<&str> = argv.iter().skip(1).copied().take_while(|a| a.starts_with('-')).collect();
    // Short options, alone or bundled (`-i`, `-il`, `-ic`); `--long` ones are not.
    let short_has = |a: &str, letters: &[char]| a.starts_with('-') && !a.starts_with("--") && a.contains(letters);
    let interactive = flags.iter().any(|f| short_has(f, &['i', 'p']));
    let Some(c_at) = argv.iter().position(|a| short_has(a, &['c'])) else {
        // No -c: a script file argument runs that script; none: a shell.
        return interactive || argv.iter().skip(1).all(|a| a.starts_with('-'));
    };
    if interactive {
        return true;
    }
    let Some(command) = argv.get(c_at + 1) else { return true };
    let words: Vec<&str> = command.split_whitespace().filter(|w| !matches!(*w, "exec" | "env" | "command")).collect();
    match words.split_first() {
        Some((first, rest)) => is_shell(basename(first)) && rest.iter().all(|a| a.starts_with('-')),
        None => false,
    }
}

/// `python3.11` -> `python`, `php8.2` -> `php`, `php-fpm8.2` -> `php-fpm`.
fn family(name: &str) -> &str {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
}

/// Suspicious-lineage detector.
pub struct Lineage {
    extra_services: Vec<String>,
    ignore_parents: Vec<String>,
}

impl Lineage {
    fn is_service(&self, name: &str) -> bool {
        let f = family(name);
        SERVICES.contains(&name) || SERVICES.contains(&f) || self.extra_services.iter().any(|s| s == name || s == f)
    }
}

impl Detector for Lineage {
    const NAME: &'static str = "lineage";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Shells spawned by services, shell escapes and interpreter one-liners";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(config: &Config) -> Result<Self, String> {
        Ok(Self { extra_services: config.get_list("extra_services"), ignore_parents: config.get_list("ignore_parents") })
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(exec) = event.exec() else { return };
        if !is_shell(exec.name()) {
            return;
        }
        let parent = exec.parent_name();
        if parent.is_empty() || self.ignore_parents.iter().any(|p| p == parent) {
            return;
        }
        if self.is_service(parent) {
            findings
                .report(&SERVICE_SHELL, event, format!("{} spawned {} ({})", parent, exec.name(), exec.command_line()))
                .evidence
                .extend([("parent".into(), exec.parent_exe.to_string()), ("command_line".into(), exec.command_line())]);
            return;
        }
        if ESCAPERS.contains(&parent) && gives_a_shell(exec.argv) {
            findings
                .report(&SHELL_ESCAPE, event, format!("{} escaped to {} ({})", parent, exec.name(), exec.command_line()))
                .evidence
                .extend([("parent_command_line".into(), exec.parent_command_line())]);
            return;
        }
        let fam = family(parent);
        if let Some((_, flags)) = ONE_LINERS.iter().find(|(name, _)| *name == fam) {
            if exec.parent_argv.iter().skip(1).any(|a| flags.contains(&a)) {
                findings
                    .report(&ONE_LINER_SHELL, event, format!("{} one-liner spawned {}", parent, exec.name()))
                    .evidence
                    .extend([("parent_command_line".into(), exec.parent_command_line())]);
            }
        }
    }
}

edr_sdk::export_detector!(Lineage);

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sdk::testing::{exec, model, Harness};

    fn rules(h: &mut Harness<Lineage>, events: &[model::Event]) -> Vec<String> {
        h.run(events).into_iter().map(|f| f.rule_id).collect()
    }

    #[test]
    fn service_spawning_shell() {
        let mut h = Harness::<Lineage>::new().unwrap();
        for parent in
            ["/usr/sbin/nginx", "/usr/sbin/apache2", "/usr/sbin/php-fpm8.2", "/usr/lib/postgresql/15/bin/postgres", "/usr/lib/libreoffice/program/soffice.bin"]
        {
            let e = exec("/bin/sh", &["sh", "-c", "id"]).parent(parent, &["x"]).build();
            assert_eq!(rules(&mut h, &[e]), vec![SERVICE_SHELL.id], "{parent}");
        }
    }

    #[test]
    fn shell_escapes_and_one_liners() {
        let mut h = Harness::<Lineage>::new().unwrap();
        let e = exec("/bin/bash", &["bash"]).parent("/usr/bin/vim", &["vim", "/etc/hosts"]).build();
        assert_eq!(rules(&mut h, &[e]), vec![SHELL_ESCAPE.id]);
        let e = exec("/bin/sh", &["sh"]).parent("/usr/bin/find", &["find", ".", "-exec", "/bin/sh", ";"]).build();
        assert_eq!(rules(&mut h, &[e]), vec![SHELL_ESCAPE.id]);
        let e = exec("/bin/sh", &["sh", "-i"]).parent("/usr/bin/python3.11", &["python3", "-c", "import pty;pty.spawn('/bin/sh')"]).build();
        assert_eq!(rules(&mut h, &[e]), vec![ONE_LINER_SHELL.id]);
        let e = exec("/bin/sh", &["sh"]).parent("/usr/bin/perl", &["perl", "-e", "exec '/bin/sh'"]).build();
        assert_eq!(rules(&mut h, &[e]), vec![ONE_LINER_SHELL.id]);
        // tar --checkpoint-action=exec=/bin/sh runs `sh -c /bin/sh`; vim :!bash runs `sh -c bash`.
        let e = exec("/bin/sh", &["sh", "-c", "/bin/sh"])
            .parent("/usr/bin/tar", &["tar", "-cf", "/dev/null", "/dev/null", "--checkpoint=1", "--checkpoint-action=exec=/bin/sh"])
            .build();
        assert_eq!(rules(&mut h, &[e]), vec![SHELL_ESCAPE.id]);
        let e = exec("/bin/sh", &["sh", "-c", "exec bash -i"]).parent("/usr/bin/vim", &["vim"]).build();
        assert_eq!(rules(&mut h, &[e]), vec![SHELL_ESCAPE.id]);
    }

    #[test]
    fn programs_running_one_command_through_sh_are_not_escapes() {
        let mut h = Harness::<Lineage>::new().unwrap();
        let quiet = [
            // tar czf runs its compressor through sh -c (issue 18).
            exec("/bin/sh", &["/bin/sh", "-c", "gzip"]).parent("/usr/bin/tar", &["tar", "czf", "/tmp/x.tgz", "/tmp/d"]).build(),
            exec("/bin/sh", &["sh", "-c", "xz -T0"]).parent("/usr/bin/tar", &["tar", "cJf", "x.txz", "d"]).build(),
            exec("/bin/sh", &["sh", "-c", "bash ./build.sh --release"]).parent("/usr/bin/timeout", &["timeout", "60", "sh", "-c", "x"]).build(),
            exec("/bin/sh", &["sh", "-c", "echo {} >> list"]).parent("/usr/bin/find", &["find", ".", "-exec", "sh", "-c", "echo {} >> list", ";"]).build(),
            exec("/bin/bash", &["bash", ".git/hooks/pre-commit"]).parent("/usr/bin/git", &["git", "commit"]).build(),
        ];
        assert!(rules(&mut h, &quiet).is_empty());
    }

    #[test]
    fn ordinary_lineage_is_quiet() {
        let mut h = Harness::<Lineage>::new().unwrap();
        let quiet = [
            exec("/bin/bash", &["bash"]).parent("/usr/sbin/sshd", &["sshd: alice"]).build(),
            exec("/bin/bash", &["bash"]).parent("/usr/bin/tmux", &["tmux"]).build(),
            exec("/usr/sbin/nginx", &["nginx"]).parent("/usr/sbin/nginx", &["nginx"]).build(),
            exec("/usr/bin/awk", &["awk", "{print}"]).parent("/bin/bash", &["bash"]).build(),
            // A script run by python (not a one-liner) starting a shell is common in tooling.
            exec("/bin/sh", &["sh", "-c", "ls"]).parent("/usr/bin/python3", &["python3", "build.py"]).build(),
            // Not a shell.
            exec("/usr/bin/id", &["id"]).parent("/usr/sbin/nginx", &["nginx"]).build(),
        ];
        assert!(rules(&mut h, &quiet).is_empty());
    }

    #[test]
    fn settings_extend_and_silence() {
        let mut h = Harness::<Lineage>::with_settings(&[("extra_services", "myapp"), ("ignore_parents", "nginx")]).unwrap();
        let e1 = exec("/bin/sh", &["sh"]).parent("/opt/myapp", &["myapp"]).build();
        let e2 = exec("/bin/sh", &["sh"]).parent("/usr/sbin/nginx", &["nginx"]).build();
        assert_eq!(rules(&mut h, &[e1, e2]), vec![SERVICE_SHELL.id]);
    }

    #[test]
    fn fixtures() {
        let mut h = Harness::<Lineage>::new().unwrap();
        let pos = h.run_fixture("tests/fixtures/positive.jsonl");
        assert_eq!(pos.len(), 3, "{pos:#?}");
        assert!(pos.iter().all(|f| !f.techniques.is_empty() && f.author == AUTHOR));
        assert!(h.run_fixture("tests/fixtures/negative.jsonl").is_empty());
    }
}
