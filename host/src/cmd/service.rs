//! `edr service install | uninstall | unit`: the agent as a systemd service.
//!
//! Layout: the binary in `/usr/local/bin/edr`, the unit in
//! `/etc/systemd/system/edr.service`, the configuration and trusted keys in
//! `/etc/edr` (0750), state in `/var/lib/edr` (0700: the record, alerts,
//! quarantine, evidence, pack versions). Logs go to stderr, which systemd
//! sends to the journal (`journalctl -u edr`). `--root DIR` stages the same
//! layout under DIR (for packaging, like DESTDIR) and never calls systemctl.

use anyhow::{bail, Context};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit template; `@BIN@` is the installed binary.
pub const UNIT_TEMPLATE: &str = include_str!("../../../packaging/edr.service");

/// Where the binary goes.
const BIN: &str = "usr/local/bin/edr";
/// Where the unit goes.
const UNIT: &str = "etc/systemd/system/edr.service";
/// Configuration and keys.
const ETC: &str = "etc/edr";
/// State.
const STATE: &str = "var/lib/edr";

/// `edr service ...`
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Install the binary, the systemd unit, /etc/edr and /var/lib/edr, then
    /// enable and start the service (when systemd runs this machine).
    Install(InstallArgs),
    /// Stop and remove the service (keeps /etc/edr and /var/lib/edr unless --purge).
    Uninstall(UninstallArgs),
    /// Print the systemd unit.
    Unit {
        /// The binary path written in ExecStart.
        #[arg(long, default_value = "/usr/local/bin/edr")]
        bin: String,
    },
}

/// Arguments of `edr service install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Stage the layout under this directory instead of `/` (no systemctl).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Install and enable, but do not start now.
    #[arg(long)]
    pub no_start: bool,
}

/// Arguments of `edr service uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The directory `install --root` used.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Also delete /etc/edr (config, keys) and /var/lib/edr (the record, quarantine, evidence).
    #[arg(long)]
    pub purge: bool,
}

/// Runs `edr service ...`.
pub fn run(c: ServiceCommand) -> anyhow::Result<()> {
    match c {
        ServiceCommand::Install(a) => install(a),
        ServiceCommand::Uninstall(a) => uninstall(a),
        ServiceCommand::Unit { bin } => {
            print!("{}", unit(&bin));
            Ok(())
        }
    }
}

/// The unit with `bin` in its command lines.
pub fn unit(bin: &str) -> String {
    UNIT_TEMPLATE.replace("@BIN@", bin)
}

/// The configuration written on first install.
fn initial_config() -> String {
    format!(
        "# edr agent configuration, written by `edr service install`.\n\
         # Check it: `edr config check`; apply: `systemctl reload edr` (outputs, metrics and\n\
         # trusted keys apply at once; other sections at the next restart).\n\
         # Every key with its default: `edr config example`.\n\
         data_dir = \"/{STATE}\"\n\
         \n\
         [output]\n\
         stdout = false                 # the journal gets logs; alerts go to alerts_file\n\
         alerts_file = \"alerts.jsonl\"   # under data_dir\n\
         \n\
         # Pin your detection vendor's key (README: \"Trusting a vendor's key\"):\n\
         # [[trust.keys]]\n\
         # name = \"vendor\"\n\
         # public_key_file = \"/{ETC}/keys/vendor.pub\"\n\
         \n\
         # Prometheus metrics, loopback only:\n\
         # [metrics]\n\
         # listen = \"127.0.0.1:9477\"\n"
    )
}

fn mkdir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn write(path: &Path, text: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Write beside, then rename: a running service never sees half a file.
    let tmp = path.with_extension("edr-new");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot install {}", path.display()))
}

/// Whether systemd manages this machine (and `--root` is `/`).
fn systemd_running(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl").args(args).status().with_context(|| format!("cannot run systemctl {}", args.join(" ")))?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn install(a: InstallArgs) -> anyhow::Result<()> {
    if a.root == Path::new("/") && unsafe { libc::geteuid() } != 0 {
        bail!("installing the service needs root (or stage it elsewhere with --root DIR)");
    }
    let root = &a.root;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let bin = root.join(BIN);
    if exe.canonicalize().ok() != bin.canonicalize().ok() {
        let bytes = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
        write(&bin, &bytes, 0o755)?;
        println!("installed {}", bin.display());
    }
    write(&root.join(UNIT), unit(&format!("/{BIN}")).as_bytes(), 0o644)?;
    println!("installed {}", root.join(UNIT).display());
    mkdir(&root.join(ETC), 0o750)?;
    mkdir(&root.join(ETC).join("keys"), 0o750)?;
    let config = root.join(ETC).join("edr.toml");
    if config.exists() {
        println!("kept the existing {}", config.display());
    } else {
        write(&config, initial_config().as_bytes(), 0o640)?;
        println!("wrote {}", config.display());
    }
    mkdir(&root.join(STATE), 0o700)?;
    if systemd_running(root) {
        systemctl(&["daemon-reload"])?;
        if a.no_start {
            systemctl(&["enable", "edr.service"])?;
            println!("enabled edr.service; start it with `systemctl start edr`");
        } else {
            systemctl(&["enable", "--now", "edr.service"])?;
            println!("edr.service is enabled and running: `systemctl status edr`, `edr status --data-dir /{STATE}`, `journalctl -u edr`");
        }
    } else if root == Path::new("/") {
        println!("systemd does not run this machine: start the agent as the unit would, with\n  /{BIN} agent --config /{ETC}/edr.toml\n(SIGHUP reloads the config, SIGTERM stops it cleanly)");
    } else {
        println!("staged under {}; nothing was started", root.display());
    }
    Ok(())
}

fn uninstall(a: UninstallArgs) -> anyhow::Result<()> {
    let root = &a.root;
    if systemd_running(root) && root.join(UNIT).exists() {
        // Stopping flushes the record; a failure here must not stop the cleanup.
        if let Err(e) = systemctl(&["disable", "--now", "edr.service"]) {
            eprintln!("edr: {e:#}");
        }
    }
    for f in [root.join(UNIT), root.join(BIN)] {
        match std::fs::remove_file(&f) {
            Ok(()) => println!("removed {}", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", f.display())),
        }
    }
    if systemd_running(root) {
        systemctl(&["daemon-reload"])?;
    }
    for d in [root.join(ETC), root.join(STATE)] {
        if !d.exists() {
            continue;
        }
        if a.purge {
            std::fs::remove_dir_all(&d).with_context(|| format!("cannot remove {}", d.display()))?;
            println!("removed {}", d.display());
        } else {
            println!("kept {} (remove it with --purge)", d.display());
        }
    }
    Ok(())
}
