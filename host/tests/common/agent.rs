//! Running a real `edr agent` process in tests, and making signed packs.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// An agent process reading events from its stdin.
pub struct Agent {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

impl Agent {
    /// Starts `edr agent` with `config_text` (written into `dir`), data dir `dir/data`.
    pub fn start(dir: &Path, config_text: &str) -> Agent {
        let data_dir = dir.join("data");
        let config = dir.join("edr.toml");
        std::fs::write(&config, format!("data_dir = {:?}\n{config_text}", data_dir)).unwrap();
        Self::start_with(config, data_dir)
    }

    /// Starts again on the same config and data dir (a restart).
    pub fn restart(&self) -> Agent {
        Self::start_with(self.config.clone(), self.data_dir.clone())
    }

    fn start_with(config: PathBuf, data_dir: PathBuf) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edr"))
            .args(["agent", "--config", config.to_str().unwrap()])
            .env("EDR_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(config.with_extension("stderr.log")).unwrap()))
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let agent = Agent { child, stdin, data_dir, config };
        // Listening, not only bound: a connect between bind and listen is refused.
        agent.wait_for("the control socket", Duration::from_secs(60), |a| std::os::unix::net::UnixStream::connect(a.data_dir.join("control.sock")).is_ok());
        agent
    }

    /// Sends ECS JSONL lines to the agent.
    pub fn send(&mut self, lines: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(lines.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The agent's stderr so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("stderr.log")).unwrap_or_default()
    }

    /// Alerts written so far.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.data_dir.join("alerts.jsonl"))
    }

    /// Health events so far.
    pub fn health(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.data_dir.join("health.jsonl"))
    }

    /// `edr status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_edr")).args(["status", "--json", "--data-dir", self.data_dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "edr status failed: {}\n--- agent log ---\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The active version of a pack, per `edr status`.
    pub fn active_version(&self, pack: &str) -> Option<String> {
        self.status()["packs"]["active"].as_array()?.iter().find(|p| p["id"] == pack).and_then(|p| p["version"].as_str().map(String::from))
    }

    /// Polls `cond` until it holds; panics with the agent's log after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, cond: impl FnMut(&Agent) -> bool) -> Duration {
        match self.poll_until(limit, cond) {
            Some(took) => took,
            None => panic!("timed out after {limit:?} waiting for {what}\n--- agent log ---\n{}", self.log()),
        }
    }

    /// Polls `cond` every 50 ms for up to `limit`: how long it took to hold,
    /// or `None` (for callers that explain a timeout themselves).
    pub fn poll_until(&self, limit: Duration, mut cond: impl FnMut(&Agent) -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond(self) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Closes stdin and sends SIGTERM (a live agent runs until told to
    /// stop), then waits for a clean exit.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A test publisher: a signing key and a way to make signed packs.
pub struct Publisher {
    pub dir: PathBuf,
    pub key: edr_pack::SecretKey,
    pub public_b64: String,
}

impl Publisher {
    pub fn new(dir: &Path, name: &str) -> Publisher {
        let keys = edr_pack::keygen(dir, name, None).unwrap();
        let key = edr_pack::SecretKey::from_file(&keys.secret, None).unwrap();
        let public_b64 = edr_pack::PublicKey::from_file(&keys.public).unwrap().to_base64();
        Publisher { dir: dir.to_path_buf(), key, public_b64 }
    }

    /// `[[trust.keys]]` config for this publisher.
    pub fn trust_config(&self, name: &str) -> String {
        format!("[[trust.keys]]\nname = {name:?}\npublic_key = {:?}\n", self.public_b64)
    }

    /// Builds and signs pack `id` `version` with one plugin `name` whose
    /// component is the build script's `package`; returns the archive path.
    pub fn pack(&self, id: &str, version: &str, name: &str, package: &str, subscriptions: &str, capabilities: &str) -> PathBuf {
        self.pack_with_actions(id, version, name, package, subscriptions, capabilities, "[]")
    }

    /// Like [`Publisher::pack`], with the response actions the plugin declares.
    #[allow(clippy::too_many_arguments)]
    pub fn pack_with_actions(&self, id: &str, version: &str, name: &str, package: &str, subscriptions: &str, capabilities: &str, actions: &str) -> PathBuf {
        let src = self.dir.join(format!("src-{id}-{version}"));
        std::fs::create_dir_all(src.join("plugins")).unwrap();
        std::fs::copy(super::plugin_path(package), src.join(format!("plugins/{name}.wasm"))).unwrap();
        let manifest = edr_pack::Manifest {
            id: id.to_string(),
            version: version.parse().unwrap_or_else(|e| panic!("version {version}: {e}")),
            min_agent_version: edr_pack::semver::Version::new(0, 1, 0),
            contract: "0.2".into(),
            publisher: "Test Publisher".into(),
            description: None,
            not_before: None,
            expires: None,
            data: Vec::new(),
            plugins: vec![edr_pack::PluginManifest {
                name: name.to_string(),
                file: format!("plugins/{name}.wasm"),
                sha256: String::new(),
                subscriptions: toml_list(subscriptions),
                capabilities: toml_list(capabilities),
                actions: toml_list(actions),
                data: Vec::new(),
                limits: Default::default(),
                settings: Default::default(),
            }],
        };
        std::fs::write(src.join(edr_pack::MANIFEST_FILE), manifest.to_toml()).unwrap();
        let built = edr_pack::build(&src, &self.dir.join("dist")).unwrap();
        edr_pack::sign(&built.path, &self.key, None).unwrap();
        built.path
    }
}

/// A TOML array of names (`["log", "state"]`) as the manifest's typed list.
fn toml_list<T: serde::de::DeserializeOwned>(array: &str) -> Vec<T> {
    #[derive(serde::Deserialize)]
    struct List<T> {
        list: Vec<T>,
    }
    let text = format!("list = {array}");
    toml::from_str::<List<T>>(&text).unwrap_or_else(|e| panic!("{array}: {e}")).list
}

/// Copies a pack and its signature into a drop-in directory (signature
/// first, archive renamed into place last, as an operator's tooling should).
pub fn drop_pack(archive: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let name = archive.file_name().unwrap();
    let sig = edr_pack::signature_path(archive);
    if sig.exists() {
        std::fs::copy(&sig, dir.join(sig.file_name().unwrap())).unwrap();
    }
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(archive, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// An exec event line for `exe` with a unique pid.
pub fn exec_line(exe: &str, pid: u32) -> String {
    format!("{{\"event\":{{\"category\":[\"process\"],\"type\":[\"start\"]}},\"process\":{{\"pid\":{pid},\"executable\":{exe:?},\"args\":[{exe:?}],\"parent\":{{\"pid\":1,\"executable\":\"/usr/bin/bash\"}}}}}}\n")
}
