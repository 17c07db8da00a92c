//! Driving the console in Debian's headless Chromium through chromedriver
//! (WebDriver, crate `fantoccini`): start the driver, log in, wait for a
//! page's script, read texts, answer confirmations, sign with the key file,
//! take screenshots (to `target/console-screenshots/`). Shared by the
//! console crate's `browser.rs` and the real-agent `host/tests/console_agent.rs`.
#![allow(dead_code)]

use fantoccini::{Client, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Whether chromium and chromedriver are installed (Debian's `chromium`, `chromium-driver`).
pub fn have_browser() -> bool {
    edr_testkit::have_program("chromium", "chromium") && edr_testkit::have_program("chromedriver", "chromium-driver")
}

/// Starts chromedriver on a free port, once it listens.
pub fn start_driver() -> (Driver, u16) {
    let port = edr_testkit::free_port();
    let driver = Driver(std::process::Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    assert!(edr_testkit::wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()), "chromedriver listens");
    (driver, port)
}

pub struct Driver(pub Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn screenshots() -> PathBuf {
    // This test binary is target/<profile>/deps/NAME: the screenshots go to target/console-screenshots.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(3).unwrap().join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits for the page's script to finish filling it; fails on its error.
pub async fn ready(c: &Client) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.execute("return [document.body.dataset.ready || '', (document.getElementById('error') || {}).textContent || '']", vec![]).await.unwrap();
        match v[0].as_str() {
            Some("1") => return,
            Some("error") => panic!("the page failed: {}", v[1]),
            _ if Instant::now() > end => panic!("the page did not get ready"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// Waits until the element's text contains `want`; returns the text.
pub async fn wait_text(c: &Client, css: &str, want: &str) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            let t = e.text().await.unwrap_or_default();
            if t.contains(want) {
                return t;
            }
            assert!(Instant::now() < end, "{css} never said {want:?}; it says {t:?}");
        }
        assert!(Instant::now() < end, "{css} never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn login(c: &Client, base: &str, name: &str, password: &str) {
    c.goto(&format!("{base}/console/login")).await.unwrap();
    c.find(Locator::Id("name")).await.unwrap().send_keys(name).await.unwrap();
    c.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
    c.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
}

pub async fn browser(driver_port: u16, profile: &std::path::Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({"binary": "/usr/bin/chromium", "args": args}));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    fantoccini::ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")).await.unwrap()
}

/// Loads the command key file into the page's key input (the file stays in the page).
pub async fn load_key(c: &Client, key: &std::path::Path) {
    c.find(Locator::Id("key-file")).await.unwrap().send_keys(&key.display().to_string()).await.unwrap();
    wait_text(c, "#key-status", "the fleet's key").await;
}

pub async fn respond(c: &Client, op: &str, reason: &str) -> String {
    respond_with(c, op, "", reason).await
}

pub async fn respond_with(c: &Client, op: &str, arg: &str, reason: &str) -> String {
    c.execute(&format!("document.getElementById('action').value = '{op}'; document.getElementById('action').dispatchEvent(new Event('change'));"), vec![])
        .await
        .unwrap();
    if !arg.is_empty() {
        let a = c.find(Locator::Id("action-arg")).await.unwrap();
        a.clear().await.unwrap();
        a.send_keys(arg).await.unwrap();
    }
    let r = c.find(Locator::Id("action-reason")).await.unwrap();
    r.clear().await.unwrap();
    r.send_keys(reason).await.unwrap();
    c.find(Locator::Id("action-go")).await.unwrap().click().await.unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while c.accept_alert().await.is_err() {
        assert!(Instant::now() < end, "no confirmation asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_text(c, "#action-status", &format!("{op}: ")).await
}

/// Accepts the page's confirmation dialog.
pub async fn accept(c: &Client) {
    let end = Instant::now() + Duration::from_secs(5);
    while c.accept_alert().await.is_err() {
        assert!(Instant::now() < end, "no confirmation asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_until_url(c: &Client, path: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !c.current_url().await.unwrap().path().ends_with(path) {
        assert!(Instant::now() < end, "never got to {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
