//! hello-detector: flags a shell command line that downloads something and
//! pipes it straight into a shell (`curl -s https://x/install.sh | sh`).

use edr_sdk::prelude::*;

/// The rule this plugin implements. Every finding carries its id, title,
/// severity, ATT&CK techniques and author.
const DOWNLOAD_AND_RUN: Rule = Rule {
    id: "hello.download-pipe-shell",
    title: "Download piped into a shell",
    severity: Severity::Medium,
    techniques: &["T1059.004", "T1105"],
    author: "Your Name",
    description: "A shell ran curl or wget and piped the result into another shell.",
};

/// The plugin's state lives in this struct (one instance per loaded plugin).
pub struct Hello;

impl Detector for Hello {
    const NAME: &'static str = "hello-detector";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Download piped into a shell";
    // The agent only calls this plugin with process execs.
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Hello)
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(exec) = event.exec() else { return };
        if !is_shell(exec.name()) {
            return;
        }
        let Some(script) = exec.arg_after("-c") else { return };
        let downloads = contains_any_ci(script, &["curl ", "wget "]);
        let pipes_to_shell = SHELLS.iter().any(|sh| contains_ci(script, &format!("| {sh}")) || contains_ci(script, &format!("|{sh}")));
        if downloads && pipes_to_shell {
            findings.report(&DOWNLOAD_AND_RUN, event, format!("{} runs: {script}", exec.name()));
        }
    }
}

edr_sdk::export_detector!(Hello);
