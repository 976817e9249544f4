//! A real headless Chromium for the console's tests, driven through chromedriver (WebDriver)
//! with fantoccini.
//!
//! Each [`Browser`] starts its own chromedriver on a free loopback port with its own throwaway
//! profile, so tests that use one run in parallel. Without chromedriver a test skips on a laptop
//! (`Browser::start` returns `None`) and fails in CI, as the PostgreSQL half does.
//!
//! ```ignore
//! let Some(browser) = Browser::start().await else { return };
//! browser.goto(&format!("{}/console/login", app.address)).await;
//! browser.fill("#email", "ada@example.com").await;
//! browser.click("button[type=submit]").await;
//! browser.wait_for("#account").await;
//! browser.assert_accessible("console account").await;
//! browser.close().await;
//! ```
//!
//! What the environment supplies: `CHROMEDRIVER` (else `/usr/bin/chromedriver`), `CHROMIUM`
//! (else `/usr/bin/chromium`), and `AXE_CORE_JS` (else the axe-core that `.ci/run` installs
//! under `target/browser-tools`). Screenshots go to `target/console-screenshots/`.

use std::fs::File;
use std::io::Write as _;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long chromedriver may take to answer its status endpoint.
const DRIVER_READY: Duration = Duration::from_secs(10);
/// How long a new session (Chromium's start) and one command may take: slow on 2 cores.
const SESSION_START: Duration = Duration::from_secs(30);
/// How long `wait_for` and the element commands wait for their element to appear.
const ELEMENT_WAIT: Duration = Duration::from_secs(10);

/// A headless Chromium in a WebDriver session of its own chromedriver.
pub struct Browser {
    client: Client,
    driver: Child,
    port: u16,
    session_id: String,
    closed: bool,
    // Removed after chromedriver and Chromium are gone (fields drop after `Drop::drop`).
    _profile: tempfile::TempDir,
}

/// No browser on this machine: a skip on a laptop, a failure in CI.
fn missing(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}: browser tests may not skip in CI (.ci/run installs chromium, chromium-driver and axe-core)"
    );
    eprintln!("skipped: {what}");
}

/// `CARGO_TARGET_DIR`, else the crate's `target/`.
pub fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("target"), |dir| manifest.join(dir))
}

/// `AXE_CORE_JS`, else the axe-core that `.ci/run` installs under `target/browser-tools`.
pub fn axe_core_js() -> PathBuf {
    std::env::var_os("AXE_CORE_JS").map_or_else(
        || target_dir().join("browser-tools/node_modules/axe-core/axe.min.js"),
        PathBuf::from,
    )
}

/// A loopback port that was free a moment ago: whoever binds it next must retry or accept the
/// small chance that another process took it meanwhile.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, or `None` when they are not installed
    /// (outside CI).
    pub async fn start() -> Option<Self> {
        let driver = std::env::var_os("CHROMEDRIVER")
            .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from);
        let chromium = std::env::var_os("CHROMIUM")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        for path in [&driver, &chromium] {
            if !path.exists() {
                missing(&format!(
                    "{} is not installed (apt-get install chromium chromium-driver)",
                    path.display()
                ));
                return None;
            }
        }

        let started = Instant::now();
        let profile = tempfile::Builder::new()
            .prefix("portcullis-chromium-")
            .tempdir()
            .expect("a temporary Chromium profile");
        let (driver, port) = start_driver(&driver, profile.path()).await;

        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--no-default-browser-check",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            }),
        );
        capabilities.insert(
            "timeouts".into(),
            json!({ "implicit": 0, "pageLoad": 30_000, "script": 30_000 }),
        );
        let mut starting = BrowserStart {
            driver: Some(driver),
            profile: Some(profile),
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        let webdriver = format!("http://127.0.0.1:{port}");
        let connect = builder.connect(&webdriver);
        let client = match tokio::time::timeout(SESSION_START, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => starting.fail(&format!("chromedriver opened no session: {error}")),
            Err(_) => starting.fail(&format!(
                "chromedriver opened no session within {SESSION_START:?}"
            )),
        };
        let session_id = client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("a WebDriver session id");
        eprintln!(
            "browser: chromedriver on port {port}, Chromium session up in {:.1?}",
            started.elapsed()
        );
        let (driver, profile) = starting.take();
        let browser = Self {
            client,
            driver,
            port,
            session_id,
            closed: false,
            _profile: profile,
        };
        // `--window-size` sizes the window, which is taller than the page's viewport.
        browser.set_window_size(1280, 900).await;
        Some(browser)
    }

    /// Ends the WebDriver session (chromedriver closes Chromium); dropping the `Browser` then
    /// stops chromedriver. Dropping without `close` kills both.
    pub async fn close(mut self) {
        self.closed = self.client.clone().close().await.is_ok();
    }

    /// The fantoccini client, for anything the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    /// The address of the page shown now.
    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current URL")
            .to_string()
    }

    /// The first element that matches `css`, waiting up to 10 s for it to appear.
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + ELEMENT_WAIT;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(error) if error.is_no_such_element() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => {
                    let url = self.current_url().await;
                    panic!("no element matches {css:?} on {url} after {ELEMENT_WAIT:?}: {error}");
                }
            }
        }
    }

    /// Whether an element matches `css` now (no waiting).
    pub async fn exists(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(_) => true,
            Err(error) if error.is_no_such_element() => false,
            Err(error) => panic!("find {css:?}: {error}"),
        }
    }

    /// Types `text` into the field `css`, after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_for(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|error| panic!("clear {css:?}: {error}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("type into {css:?}: {error}"));
    }

    /// Clicks the element `css` as a user would (it must be visible and not covered).
    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {css:?}: {error}"));
    }

    /// Submits the form `css` as pressing Enter in it would: `requestSubmit()`, so the browser's
    /// constraint validation and the page's submit handlers run.
    pub async fn submit_form(&self, css: &str) {
        let form = self.wait_for(css).await;
        self.client
            .execute("arguments[0].requestSubmit();", vec![json!(form)])
            .await
            .unwrap_or_else(|error| panic!("submit {css:?}: {error}"));
    }

    /// The rendered text of the element `css` (waiting for it to appear).
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css)
            .await
            .text()
            .await
            .unwrap_or_else(|error| panic!("text of {css:?}: {error}"))
    }

    /// Makes the page's viewport (CSS `innerWidth` x `innerHeight`) `width` x `height`: 390x844
    /// for a phone, 1280x900 for a desktop. Headless Chromium's window is taller than its
    /// viewport (by about 140 px) and at least 500 px wide, so the window is sized, measured and
    /// corrected.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        let (mut outer_width, mut outer_height) = (width, height);
        for _ in 0..3 {
            self.client
                .set_window_size(outer_width, outer_height)
                .await
                .unwrap_or_else(|error| panic!("resize to {outer_width}x{outer_height}: {error}"));
            let inner = self
                .execute("return [window.innerWidth, window.innerHeight];", vec![])
                .await;
            let measured = |i: usize| u32::try_from(inner[i].as_u64().unwrap_or(0)).unwrap_or(0);
            let (inner_width, inner_height) = (measured(0), measured(1));
            if (inner_width, inner_height) == (width, height) {
                return;
            }
            outer_width = (outer_width + width).saturating_sub(inner_width);
            outer_height = (outer_height + height).saturating_sub(inner_height);
        }
        let inner = self
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        panic!("the viewport is {inner}, not {width}x{height}");
    }

    /// Saves the viewport as `target/console-screenshots/<name>.png` and returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = target_dir().join("console-screenshots");
        std::fs::create_dir_all(&dir).expect("create the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Runs `js` in the page (`arguments` holds `args`; `return` gives the result).
    pub async fn execute(&self, js: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(js, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{js}"))
    }

    /// The cookies the browser holds for the current page, `HttpOnly` ones included.
    pub async fn cookies(&self) -> Vec<Cookie<'static>> {
        self.client.get_all_cookies().await.expect("cookies")
    }

    /// Forgets every cookie of the current page's site.
    pub async fn delete_all_cookies(&self) {
        self.client
            .delete_all_cookies()
            .await
            .expect("delete cookies");
    }

    /// A Chrome DevTools Protocol command through chromedriver (`goog/cdp/execute`), e.g.
    /// `WebAuthn.enable` and `WebAuthn.addVirtualAuthenticator`: its result object.
    pub async fn cdp(&self, method: &str, params: Value) -> Value {
        self.client
            .issue_cmd(CdpCommand {
                method: method.to_owned(),
                params,
            })
            .await
            .unwrap_or_else(|error| panic!("CDP {method}: {error}"))
    }

    /// Runs axe-core on the page shown now: `Err` with a report when it finds a `serious` or
    /// `critical` violation. Lesser ones are only printed. Without axe-core on a laptop: `Ok`
    /// after a skip message.
    pub async fn axe(&self, page_name: &str) -> Result<(), String> {
        let path = axe_core_js();
        let Ok(source) = std::fs::read_to_string(&path) else {
            missing(&format!(
                "{} is missing (npm install --prefix target/browser-tools axe-core@4)",
                path.display()
            ));
            return Ok(());
        };
        // WebDriver scripts run outside the page's Content-Security-Policy in Chromium, so a
        // page with `script-src 'self'` still takes axe this way.
        if self.execute("return typeof window.axe;", vec![]).await != json!("object") {
            self.client
                .execute(&source, vec![])
                .await
                .map_err(|error| format!("{page_name}: injecting axe-core failed: {error}"))?;
        }
        let outcome = self
            .client
            .execute_async(
                r"
                const done = arguments[arguments.length - 1];
                axe.run(document, { resultTypes: ['violations'] })
                  .then((results) => done({ violations: results.violations.map((v) => ({
                    id: v.id,
                    impact: v.impact,
                    help: v.help,
                    helpUrl: v.helpUrl,
                    nodes: v.nodes.map((n) => ({ target: n.target.flat().join(' '), html: n.html })),
                  })) }))
                  .catch((error) => done({ error: String((error && error.stack) || error) }));
                ",
                vec![],
            )
            .await
            .map_err(|error| format!("{page_name}: axe.run failed: {error}"))?;
        if let Some(error) = outcome.get("error") {
            return Err(format!("{page_name}: axe.run failed: {error}"));
        }
        let violations = outcome["violations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (blocking, lesser): (Vec<_>, Vec<_>) = violations
            .iter()
            .partition(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")));
        if !lesser.is_empty() {
            let ids: Vec<String> = lesser
                .iter()
                .map(|v| format!("{} ({})", v["id"], v["impact"]))
                .collect();
            eprintln!("axe ({page_name}): lesser violations: {}", ids.join(", "));
        }
        if blocking.is_empty() {
            return Ok(());
        }
        let mut report = format!(
            "axe found {} serious or critical accessibility violation(s) on {page_name}:",
            blocking.len()
        );
        for violation in blocking {
            report.push_str(&format!(
                "\n- {} [{}]: {} ({})",
                violation["id"].as_str().unwrap_or("?"),
                violation["impact"].as_str().unwrap_or("?"),
                violation["help"].as_str().unwrap_or("?"),
                violation["helpUrl"].as_str().unwrap_or("?"),
            ));
            for node in violation["nodes"].as_array().into_iter().flatten() {
                report.push_str(&format!(
                    "\n    at {}: {}",
                    node["target"].as_str().unwrap_or("?"),
                    node["html"].as_str().unwrap_or("?"),
                ));
            }
        }
        Err(report)
    }

    /// [`Browser::axe`], panicking with its report.
    pub async fn assert_accessible(&self, page_name: &str) {
        if let Err(report) = self.axe(page_name).await {
            panic!("{report}");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Without `close`, ask chromedriver to end the session, so that it closes Chromium, then
        // stop chromedriver and whatever is left of its process group.
        if !self.closed && matches!(self.driver.try_wait(), Ok(None)) {
            delete_session(self.port, &self.session_id);
        }
        kill_group(&mut self.driver);
    }
}

/// A chromedriver on a free port, answering its status endpoint. Retries on another port when
/// the one it was given was taken meanwhile (tests start browsers in parallel).
async fn start_driver(path: &Path, dir: &Path) -> (Child, u16) {
    let log_path = dir.join("chromedriver.log");
    for _ in 0..3 {
        let port = free_port();
        let log = File::create(&log_path).expect("chromedriver log file");
        let mut driver = Command::new(path);
        driver
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // Its own process group: Drop kills chromedriver and any Chromium it left behind.
        std::os::unix::process::CommandExt::process_group(&mut driver, 0);
        let mut child = driver.spawn().expect("start chromedriver");
        let status = reqwest::Client::new();
        let deadline = Instant::now() + DRIVER_READY;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            let url = format!("http://127.0.0.1:{port}/status");
            if let Ok(response) = status.get(&url).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == json!(true)
            {
                return (child, port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kill_group(&mut child);
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    panic!(
        "chromedriver did not answer within {DRIVER_READY:?} on three ports; its output:\n{log}"
    );
}

/// What `Browser::start` holds until the session is open: cleaned up if it panics.
struct BrowserStart {
    driver: Option<Child>,
    profile: Option<tempfile::TempDir>,
}

impl BrowserStart {
    fn fail(&mut self, message: &str) -> ! {
        let log = self
            .profile
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.path().join("chromedriver.log")).ok())
            .unwrap_or_default();
        panic!("{message}\nchromedriver's output:\n{log}");
    }

    fn take(&mut self) -> (Child, tempfile::TempDir) {
        (
            self.driver.take().expect("driver"),
            self.profile.take().expect("profile"),
        )
    }
}

impl Drop for BrowserStart {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.driver {
            kill_group(driver);
        }
    }
}

/// SIGKILL to the process group of `child` (which leads it), then reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `DELETE /session/{id}` by hand: `Drop` cannot await fantoccini.
fn delete_session(port: u16, session_id: &str) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE /session/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
        let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
    }
}

/// chromedriver's `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct CdpCommand {
    method: String,
    params: Value,
}

/// `url::ParseError`, named through reqwest's re-export of `url::Url`.
type UrlParseError = <reqwest::Url as std::str::FromStr>::Err;

impl WebDriverCompatibleCommand for CdpCommand {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, UrlParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &reqwest::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({ "cmd": self.method, "params": self.params });
        (reqwest::Method::POST, Some(body.to_string()))
    }
}

// The harness's own check.

/// The CSP the console's pages will send: no inline script, no eval.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'";

const FORM_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Harness check</title>
<script>document.title = "the inline script ran";</script>
</head>
<body>
<main>
<h1>Say hello</h1>
<form id="greet" action="/hello" method="get">
<label for="name">Your name</label>
<input id="name" name="name" type="text" autocomplete="name">
<button id="send" type="submit">Send</button>
</form>
</main>
</body>
</html>"#;

const UNLABELLED_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Unlabelled</title></head>
<body><main><h1>Who are you?</h1><form><input type="text"></form></main></body>
</html>"#;

/// A throwaway HTTP/1.1 server on loopback (another origin than the app's): each request's
/// target is answered with `respond`'s status line, extra header lines and HTML body.
pub async fn serve_html<F>(respond: F) -> String
where
    F: Fn(&str) -> (&'static str, String, String) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let respond = std::sync::Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let respond = std::sync::Arc::clone(&respond);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, extra, body) = respond(&target);
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     {extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}

/// Three fixed pages, every answer under [`CSP`].
async fn serve_pages() -> String {
    serve_html(|target| {
        let csp = format!("Content-Security-Policy: {CSP}\r\n");
        match target.split_once('?') {
            None if target == "/" => (
                "200 OK",
                format!("{csp}Set-Cookie: harness=1; Path=/; HttpOnly; SameSite=Strict\r\n"),
                FORM_PAGE.to_owned(),
            ),
            None if target == "/unlabelled" => ("200 OK", csp, UNLABELLED_PAGE.to_owned()),
            Some(("/hello", query)) => {
                let name: String = query
                    .strip_prefix("name=")
                    .unwrap_or("")
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect();
                let page = FORM_PAGE.replace(
                    "<h1>Say hello</h1>",
                    &format!("<h1>Say hello</h1><p id=\"greeting\">Hello, {name}</p>"),
                );
                ("200 OK", csp, page)
            }
            _ => ("404 Not Found", csp, String::new()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_harness_drives_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let site = serve_pages().await;

    browser.goto(&format!("{site}/")).await;
    let viewport = "return [innerWidth, innerHeight, document.documentElement.clientWidth];";
    assert_eq!(
        browser.execute(viewport, vec![]).await,
        json!([1280, 900, 1280]),
        "a desktop viewport to begin with"
    );
    assert_eq!(
        browser.client().title().await.unwrap(),
        "Harness check",
        "the CSP blocks the inline script, so axe below runs under a CSP that is enforced"
    );
    assert_eq!(
        browser
            .execute("return arguments[0] + 1;", vec![json!(41)])
            .await,
        json!(42)
    );
    let cookies = browser.cookies().await;
    assert!(
        cookies
            .iter()
            .any(|c| c.name() == "harness" && c.http_only() == Some(true)),
        "{cookies:?}"
    );
    browser.assert_accessible("the labelled form").await;

    browser.fill("#name", "Ada").await;
    browser.click("#send").await;
    assert_eq!(browser.text("#greeting").await, "Hello, Ada");
    assert_eq!(
        browser.current_url().await,
        format!("{site}/hello?name=Ada")
    );

    browser.fill("#name", "Grace").await;
    browser.submit_form("#greet").await;
    browser.wait_for("#greeting").await;
    let deadline = Instant::now() + ELEMENT_WAIT;
    while browser.text("#greeting").await != "Hello, Grace" {
        assert!(Instant::now() < deadline, "the form was not submitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!browser.exists("#nowhere").await);

    browser.set_window_size(390, 844).await;
    assert_eq!(
        browser.execute(viewport, vec![]).await,
        json!([390, 844, 390])
    );
    let phone = browser.screenshot("harness-phone").await;
    browser.set_window_size(1280, 900).await;
    assert_eq!(
        browser.execute(viewport, vec![]).await,
        json!([1280, 900, 1280])
    );
    let desktop = browser.screenshot("harness-desktop").await;
    for png in [&phone, &desktop] {
        let bytes = std::fs::read(png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{}", png.display());
    }

    browser.delete_all_cookies().await;
    assert!(browser.cookies().await.is_empty());

    // What the passkey tests will need: a virtual authenticator through CDP.
    let version = browser.cdp("Browser.getVersion", json!({})).await;
    assert!(
        version["product"].as_str().unwrap_or("").contains("Chrom"),
        "{version}"
    );
    browser.cdp("WebAuthn.enable", json!({})).await;
    let authenticator = browser
        .cdp(
            "WebAuthn.addVirtualAuthenticator",
            json!({ "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
            }}),
        )
        .await;
    assert!(
        authenticator["authenticatorId"].is_string(),
        "{authenticator}"
    );

    browser.goto(&format!("{site}/unlabelled")).await;
    if !axe_core_js().exists() {
        browser.close().await;
        return; // skipped above, outside CI
    }
    let report = browser
        .axe("the unlabelled input")
        .await
        .expect_err("axe reports an input without a label");
    eprintln!("the report axe gave, as expected:\n{report}");
    assert!(report.contains("- label [critical]"), "{report}");
    assert!(report.contains("<input type=\"text\">"), "{report}");

    browser.close().await;
}
