//! A local `nats-server` child running the fleet's generated configuration.

use crate::error::FleetError;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The child; killed when dropped.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
}

impl LocalNats {
    /// Starts `program -js -c config` (its log goes to `log`) and waits until `listen` accepts connections.
    ///
    /// # Errors
    /// When it cannot start, exits, or does not listen within 15 s.
    pub fn start(program: &str, config: &Path, listen: &str, log: &Path) -> Result<LocalNats, FleetError> {
        let mut child = Command::new(program)
            .arg("-js")
            .arg("-c")
            .arg(config)
            .arg("-l")
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| FleetError::Nats(format!("cannot start {program} (install the nats-server package, or set nats.start_local = false): {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(FleetError::Nats(format!("{program} exited ({status}); its log {} ends: {:?}", log.display(), tail)));
            }
            if std::net::TcpStream::connect(listen).is_ok() {
                tracing::info!(listen, config = %config.display(), "local nats-server started");
                return Ok(LocalNats { child });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FleetError::Nats(format!("{program} did not listen on {listen} within 15 s (log: {})", log.display())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
