//! `edr pack ...` and `edr keygen`: make, sign, check and manage packs.

use anyhow::{bail, Context};
use edr_agent::control::{self, Request};
use edr_agent::packs::{self, PackState};
use edr_pack::semver::Version;
use std::path::{Path, PathBuf};

/// `edr pack` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PackCommand {
    /// Scaffold a plugin crate and its pack manifest from the SDK template.
    New {
        /// Plugin name (lower case, digits, `-`).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Pack id (default: com.example.NAME).
        #[arg(long)]
        id: Option<String>,
    },
    /// Build a pack: compile the plugin crate (if DIR has a Cargo.toml) into
    /// the manifest's plugin file, then pack DIR/pack.toml and its files.
    Build {
        dir: PathBuf,
        /// Output directory (default: DIR/dist).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Sign a pack archive, writing ARCHIVE.minisig.
    Sign {
        archive: PathBuf,
        /// Secret key file (from `edr keygen` or `minisign -G`).
        #[arg(long, short)]
        key: PathBuf,
        /// Read the key's password from this file (for encrypted keys).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Verify a pack against public keys (or the agent config's trusted keys).
    Verify {
        archive: PathBuf,
        /// Public key file(s) to trust (minisign .pub); default: the config's keys.
        #[arg(long = "key", short)]
        keys: Vec<PathBuf>,
        /// Agent configuration whose [trust] keys to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show what an archive says about itself (unverified).
    Inspect { archive: PathBuf },
    /// List the packs installed in an agent's data dir.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Roll a pack back to its previous good version (through the running
    /// agent; or in the data dir when the agent is stopped).
    Rollback {
        id: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Arguments of `edr keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Key name (files NAME.key and NAME.pub).
    #[arg(long, default_value = "edr-publisher")]
    pub name: String,
    /// Directory to write the keys to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Encrypt the secret key with the password in this file.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

fn read_password(p: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    p.as_ref()
        .map(|p| std::fs::read_to_string(p).map(|s| s.trim_end_matches(['\n', '\r']).to_string()).with_context(|| format!("cannot read {}", p.display())))
        .transpose()
}

pub fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let password = read_password(&a.password_file)?;
    let keys = edr_pack::keygen(&a.dir, &a.name, password.as_deref())?;
    let public = edr_pack::PublicKey::from_file(&keys.public)?;
    println!("secret key: {} (keep it offline; mode 0600)", keys.secret.display());
    println!("public key: {}", keys.public.display());
    println!("key id:     {}", keys.key_id);
    println!();
    println!("Pin it in the agent's configuration:");
    println!();
    println!("[[trust.keys]]");
    println!("name = {:?}", a.name);
    println!("public_key = {:?}", public.to_base64());
    Ok(())
}

pub fn run(cmd: PackCommand) -> anyhow::Result<()> {
    match cmd {
        PackCommand::New { name, dir, id } => new(&name, dir, id),
        PackCommand::Build { dir, out } => build(&dir, out),
        PackCommand::Sign { archive, key, password_file } => {
            let password = read_password(&password_file)?;
            let key = edr_pack::SecretKey::from_file(&key, password.as_deref())?;
            let sig = edr_pack::sign(&archive, &key, None)?;
            println!("signed {} with key {}: {}", archive.display(), key.key_id(), sig.display());
            Ok(())
        }
        PackCommand::Verify { archive, keys, config } => verify(&archive, &keys, config),
        PackCommand::Inspect { archive } => inspect(&archive),
        PackCommand::List { config, data_dir } => list(&data_dir_of(config, data_dir)?),
        PackCommand::Rollback { id, config, data_dir } => rollback(&data_dir_of(config, data_dir)?, &id),
    }
}

fn data_dir_of(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match data_dir {
        Some(d) => d,
        None => super::load_config(config.as_deref())?.data_dir,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !name.starts_with('-')
}

fn new(name: &str, dir: Option<PathBuf>, id: Option<String>) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("`{name}` is not a valid plugin name: use lower-case letters, digits and `-`");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let id = id.unwrap_or_else(|| format!("com.example.{name}"));
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let krate = name.replace('-', "_");
    let ty: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n# Outside a workspace of its own.\n[workspace]\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\n# The edr SDK (a path into the edr source tree this `edr` was built from).\nedr-sdk = {{ path = {:?} }}\n\n[profile.release]\nlto = true\ncodegen-units = 1\nopt-level = 3\nstrip = \"debuginfo\"\n",
            sdk.display().to_string()
        ),
    )?;
    std::fs::write(
        dir.join("src/lib.rs"),
        format!(
            r#"//! {name}: an edr detection plugin.

use edr_sdk::prelude::*;

const RULE: Rule = Rule {{
    id: "{id}.example",
    title: "Example: a shell started from /tmp",
    severity: Severity::Medium,
    techniques: &["T1059.004"],
    author: "Your Name",
    description: "Replace this with what your rule detects.",
}};

/// The detector.
pub struct {ty};

impl Detector for {ty} {{
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(_config: &Config) -> Result<Self, String> {{
        Ok({ty})
    }}

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {{
        let Some(exec) = event.exec() else {{ return }};
        if is_shell(exec.name()) && exec.cwd.starts_with("/tmp") {{
            findings.report(&RULE, event, format!("{{}} started in {{}}", exec.name(), exec.cwd));
        }}
    }}
}}

edr_sdk::export_detector!({ty});
"#
        ),
    )?;
    std::fs::write(
        dir.join("tests/detect.rs"),
        format!(
            "use edr_sdk::testing::{{exec, Harness}};\nuse {krate}::{ty};\n\n#[test]\nfn fires_on_a_shell_in_tmp() {{\n    let mut h = Harness::<{ty}>::new().unwrap();\n    let hits = h.run(&[exec(\"/bin/sh\", &[\"sh\"]).cwd(\"/tmp/x\").build()]);\n    assert_eq!(hits.len(), 1);\n    assert!(h.run(&[exec(\"/bin/sh\", &[\"sh\"]).cwd(\"/home/a\").build()]).is_empty());\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("pack.toml"),
        format!(
            "# The pack manifest (see `edr pack build`). sha256 fields are filled in by the build.\nid = \"{id}\"\nversion = \"0.1.0\"\nmin_agent_version = \"{}\"\ncontract = \"0.2\"\npublisher = \"Your Name\"\ndescription = \"{name}\"\n\n[[plugin]]\nname = \"{name}\"\nfile = \"plugins/{name}.wasm\"\nsha256 = \"\"\nsubscriptions = [\"process-exec\"]\ncapabilities = [\"log\"]\n",
            env!("CARGO_PKG_VERSION")
        ),
    )?;
    println!("created {} ({id})", dir.display());
    println!("next: cd {0} && cargo test && edr pack build . && edr keygen && edr pack sign dist/*.edrpack --key edr-publisher.key", dir.display());
    Ok(())
}

fn build(dir: &Path, out: Option<PathBuf>) -> anyhow::Result<()> {
    let manifest_path = dir.join(edr_pack::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    if dir.join("Cargo.toml").exists() {
        // A template (sha256 fields still empty): read only where the plugin goes;
        // the pack builder validates the manifest in full.
        let template: toml::Value = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
        let plugins = template.get("plugin").and_then(|p| p.as_array()).cloned().unwrap_or_default();
        let package = edr_wasm_build::package_name(&dir.join("Cargo.toml"))?;
        let name_of = |p: &toml::Value| p.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let plugin = plugins
            .iter()
            .find(|p| name_of(p) == package || name_of(p) == package.replace('_', "-"))
            .or(plugins.first())
            .context("the manifest lists no [[plugin]]")?;
        let file = plugin.get("file").and_then(|f| f.as_str()).context("the manifest's [[plugin]] has no `file`")?;
        eprintln!("edr pack build: compiling {package} for {}", edr_wasm_build::TARGET);
        let spec = edr_wasm_build::GuestBuild {
            manifest_path: dir.join("Cargo.toml"),
            packages: Vec::new(),
            target_dir: dir.join("target"),
            profile: "release".into(),
        };
        let built = edr_wasm_build::build(&spec, &dir.join("target/edr-component"))?;
        let dest = dir.join(file);
        std::fs::create_dir_all(dest.parent().unwrap_or(dir))?;
        std::fs::copy(&built[0].component, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    let out = out.unwrap_or_else(|| dir.join("dist"));
    let b = edr_pack::build(dir, &out)?;
    println!(
        "built {} ({} {}; {} bytes, {} unpacked; sha256 {})",
        b.path.display(),
        b.manifest.id,
        b.manifest.version,
        b.archive_bytes,
        b.unpacked_bytes,
        b.archive_sha256
    );
    Ok(())
}

fn verify(archive: &Path, keys: &[PathBuf], config: Option<PathBuf>) -> anyhow::Result<()> {
    let trust = if keys.is_empty() {
        packs::trust_store(&super::load_config(config.as_deref())?, Some(&crate::builtin::PACK))?
    } else {
        let mut t = edr_pack::TrustStore::new();
        for k in keys {
            t.add(k.display().to_string(), edr_pack::PublicKey::from_file(k)?)?;
        }
        t
    };
    let policy = edr_pack::VerifyPolicy::new(packs::agent_version());
    match edr_pack::verify(archive, &edr_pack::signature_path(archive), &trust, &policy) {
        Ok(p) => {
            println!("OK: {} {} by {}, signed by {} ({})", p.manifest.id, p.manifest.version, p.manifest.publisher, p.signer.name, p.signer.key_id);
            for pl in &p.plugins {
                let subs: Vec<&str> = pl.subscriptions.iter().map(|s| s.as_str()).collect();
                println!("  plugin {} ({} KB): {}", pl.name, pl.wasm.len() / 1024, subs.join(", "));
            }
            Ok(())
        }
        Err(r) => bail!("REJECTED ({}): {r}", r.reason_code()),
    }
}

fn inspect(archive: &Path) -> anyhow::Result<()> {
    let u = edr_pack::inspect(archive)?;
    let m = &u.unverified_manifest;
    println!("UNVERIFIED (nothing below is trusted until `edr pack verify`):");
    println!("id: {}\nversion: {}\npublisher: {}\ncontract: {}\nmin_agent_version: {}", m.id, m.version, m.publisher, m.contract, m.min_agent_version);
    if let Some(k) = &u.unverified_key_id {
        println!("signature key id: {k}");
    }
    println!("archive: {} bytes", u.archive_bytes);
    for f in &u.files {
        println!("  {} ({} bytes)", f.path, f.size);
    }
    for p in &m.plugins {
        println!(
            "plugin {}: file {}, subscriptions {:?}, capabilities {:?}, actions {:?}",
            p.name,
            p.file,
            p.subscriptions,
            p.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            p.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn list(data_dir: &Path) -> anyhow::Result<()> {
    let state = PackState::load(&data_dir.join("packs/state.json"))?;
    if state.packs.is_empty() {
        println!("no packs installed in {}", data_dir.display());
    }
    for (id, e) in &state.packs {
        let active = if e.active.is_empty() { "none" } else { &e.active };
        println!("{id}: active {active} (highest ever {}), kept: {}", e.highest, e.good.join(", "));
        for b in &e.bad {
            println!("  rolled back from {} at {}: {}", b.version, b.time, b.reason);
        }
    }
    Ok(())
}

fn rollback(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    if control::socket_path(data_dir).exists() {
        if let Ok(reply) = control::call(data_dir, &Request::Rollback { pack: id.to_string() }) {
            if reply.ok {
                println!("rolled back: {}", reply.result.unwrap_or_default());
                return Ok(());
            }
            bail!("{}", reply.error.unwrap_or_default());
        }
    }
    // The agent is not running: switch the active version on disk; the agent
    // verifies it again when it starts.
    let path = data_dir.join("packs/state.json");
    let mut state = PackState::load(&path)?;
    let entry = state.get(id).cloned().with_context(|| format!("pack `{id}` is not installed in {}", data_dir.display()))?;
    let current = Version::parse(&entry.active)?;
    let previous = entry
        .good
        .iter()
        .filter_map(|v| Version::parse(v).ok())
        .filter(|v| *v < current)
        .max()
        .with_context(|| format!("pack `{id}` has no good version older than {current}"))?;
    state.mark_bad(id, &current, "rolled back by the operator (agent stopped)");
    state.set_active(id, &previous);
    state.save(&path)?;
    println!("{id}: {current} -> {previous} (takes effect when the agent starts)");
    Ok(())
}
