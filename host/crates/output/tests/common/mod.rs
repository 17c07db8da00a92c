//! Test helpers: a tiny HTTP/1.1 receiver and alert builders.
#![allow(dead_code)]

use edr_output::{AlertOutput, OutgoingAlert, OutputStatus};
#[allow(unused_imports)] // each test binary uses some of them
pub use edr_testkit::{free_port, wait_until};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
    pub at: Instant,
}

impl Request {
    /// Alert ids in the body (each line's `"id"`).
    pub fn body_ids(&self) -> Vec<u64> {
        self.body
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["id"].as_u64().expect("id"))
            .collect()
    }
    /// Ids in `X-Edr-Alert-Ids`.
    pub fn header_ids(&self) -> Vec<u64> {
        self.headers["x-edr-alert-ids"].split(',').map(|s| s.parse().expect("id")).collect()
    }
}

/// How the receiver answers a request.
pub type Responder = dyn Fn(&Request) -> (u16, Vec<(String, String)>) + Send + Sync;

/// An HTTP receiver on 127.0.0.1.
pub struct Receiver {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub fn start(port: u16) -> Receiver {
        Self::with(port, Arc::new(|_| (200, vec![])))
    }

    /// Answers the statuses of `script` in turn, then 200.
    pub fn scripted(port: u16, script: Vec<(u16, Vec<(String, String)>)>) -> Receiver {
        let script = Mutex::new(VecDeque::from(script));
        Self::with(port, Arc::new(move |_| script.lock().unwrap().pop_front().unwrap_or((200, vec![]))))
    }

    pub fn with(port: u16, respond: Arc<Responder>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver port");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (requests, respond, stop) = (requests.clone(), respond.clone(), stop.clone());
                            conns.push(std::thread::spawn(move || serve(s, &requests, &*respond, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        Receiver { port, requests, stop, thread: Some(thread) }
    }

    /// Requests answered with 2xx, in order.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests.lock().unwrap().iter().filter(|r| (200..300).contains(&r.status)).cloned().collect()
    }

    /// Alert ids of the 2xx requests, in order.
    pub fn accepted_ids(&self) -> Vec<u64> {
        self.accepted().iter().flat_map(|r| r.body_ids()).collect()
    }

    pub fn all(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(s: TcpStream, requests: &Mutex<Vec<Request>>, respond: &Responder, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    loop {
        // Request line (wait for it while not stopping).
        let mut line = String::new();
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => break,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(_) => return,
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").map(|v| v.parse().expect("length")).unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let mut req = Request { headers, body: String::from_utf8(body).expect("utf-8"), status: 0, at: Instant::now() };
        let (status, extra) = respond(&req);
        req.status = status;
        requests.lock().unwrap().push(req);
        let mut resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n");
        for (k, v) in extra {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\nok");
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// An ECS-like alert document with `id` and `pad` bytes of filler.
pub fn alert_json(id: u64, pad: usize) -> String {
    serde_json::json!({"id": id, "event": {"kind": "alert", "severity": 73}, "rule": {"id": "edr.test"}, "pad": "x".repeat(pad)}).to_string()
}

/// Sends alert `id` with `json`.
pub fn send(out: &mut dyn AlertOutput, id: u64, json: &str) -> Result<(), edr_output::OutputError> {
    out.send(&OutgoingAlert { id, json, severity: 73, rule_id: "edr.test", hostname: "test-host" })
}

/// Status, for assertions messages.
pub fn show(s: &OutputStatus) -> String {
    serde_json::to_string(s).unwrap()
}
