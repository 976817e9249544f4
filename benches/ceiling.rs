//! The ceiling (issue 26): what Portcullis itself costs per request, against a bare poem server
//! built from the same poem and tokio, side by side in this one process.
//!
//! `cargo bench --bench ceiling` starts both servers, each on its own runtime and port:
//! Portcullis in its production profile (SQLite, its access log at `info` into
//! `target/ceiling/portcullis.log`), and a poem server with one route, `GET /public`, answering
//! the same JSON. A load generator on this process's own threads (wrk's defaults: two threads,
//! keep-alive connections, one request in flight on each) then measures, in alternating rounds,
//! bare `/public`, Portcullis's `/public` and an authenticated `/protected/user`, and prints the
//! medians and the ratios against bare poem; then the single-connection latency of bare
//! `/public` and of `/protected/user`; then the allocations per request over a million
//! requests, counted by this process's allocator.
//!
//! Settings, all optional:
//! - `CEILING_ROUNDS` (default 7) and `CEILING_SECONDS` (default 3): how many alternating
//!   rounds, and how long wrk measures each load in each, after a second of warm-up;
//! - `CEILING_CONNECTIONS` (default 32) and `CEILING_THREADS` (default 2): the load generator;
//! - `CEILING_LATENCY_REQUESTS` (default 50000): single-connection requests per server;
//! - `CEILING_ALLOCATION_REQUESTS` (default 1000000): requests per load in the allocation count;
//! - `CEILING_LOG_LEVEL` (default `info`, production's): Portcullis's log level;
//! - `CEILING_DATABASE_URL` (default a new SQLite file under `target/ceiling`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use poem::listener::TcpAcceptor;
use poem::web::Json;
use poem::{Route, get, handler};
use portcullis::config::{Profile, Settings};
use portcullis::startup::Application;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[path = "support/server.rs"]
mod server;

use server::{Result, SECRET, log_in, percentile, setting};

/// Counts allocations while [`COUNTING`] is on; otherwise one relaxed load on top of the
/// system allocator, for both servers alike.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PASSWORD: &str = "ceiling benchmark password 1";

/// What both servers answer at `GET /public` (API.md).
#[derive(Serialize)]
struct Message {
    message: &'static str,
}

#[handler]
fn public() -> Json<Message> {
    Json(Message {
        message: "This is a public endpoint",
    })
}

/// The bare poem server: one route, poem's own server loop, tokio's default runtime.
fn start_bare_poem() -> Result<(tokio::runtime::Runtime, SocketAddr)> {
    // Named, as Portcullis's are, so that a profile of this process tells them apart.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bare-poem")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let acceptor = runtime.block_on(async { TcpAcceptor::from_tokio(listener) })?;
    runtime.spawn(
        poem::Server::new_with_acceptor(acceptor).run(Route::new().at("/public", get(public))),
    );
    Ok((runtime, address))
}

/// Portcullis as `portcullis serve` runs it, in the production profile, on a runtime of its own.
/// Its settings come from the environment `main` sets, as the binary's would.
fn start_portcullis() -> Result<(tokio::runtime::Runtime, SocketAddr)> {
    let settings = Settings::load(
        Profile::Production,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
    )?;
    // The log writer stops when the process does: the figures do not need its last lines.
    std::mem::forget(portcullis::telemetry::init(
        settings.log_format,
        &settings.log_level,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("portcullis")
        .enable_all()
        .build()?;
    let app = runtime.block_on(Application::build(&settings))?;
    let address = app.address();
    runtime.spawn(app.run_until(std::future::pending()));
    Ok((runtime, address))
}

/// A `GET` request, as wrk sends it.
fn request(path: &str, address: SocketAddr, token: Option<&str>) -> Arc<[u8]> {
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}\r\n")
        .into_bytes()
        .into()
}

/// One keep-alive connection of the load generator: reads whole responses into one buffer it
/// keeps, so that it allocates nothing per request.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Sends `request` and reads the response; its status must be 200.
    async fn exchange(&mut self, request: &[u8]) -> Result<()> {
        self.stream.write_all(request).await?;
        let mut filled = 0;
        let (head_end, body_len) = loop {
            let read = self.stream.read(&mut self.buffer[filled..]).await?;
            if read == 0 {
                return Err("the server closed the connection".into());
            }
            filled += read;
            if let Some(head_end) = find(&self.buffer[..filled], b"\r\n\r\n") {
                let head = &self.buffer[..head_end];
                if !head.starts_with(b"HTTP/1.1 200 ") {
                    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
                    return Err(format!("answered {}", String::from_utf8_lossy(line)).into());
                }
                break (
                    head_end + 4,
                    content_length(head).ok_or("no Content-Length")?,
                );
            }
            if filled == self.buffer.len() {
                return Err("a response head over 64 KiB".into());
            }
        };
        let whole = head_end + body_len;
        if whole > self.buffer.len() {
            return Err("a response over 64 KiB".into());
        }
        while filled < whole {
            let read = self.stream.read(&mut self.buffer[filled..whole]).await?;
            if read == 0 {
                return Err("the server closed the connection mid-body".into());
            }
            filled += read;
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        name.eq_ignore_ascii_case(b"content-length")
            .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())
            .flatten()
    })
}

/// Sends `request` to `address` `requests` times (a few more: those in flight at the end) from
/// `connections` connections on `threads` threads, each thread a current-thread runtime.
/// `progress`, when given, is called by whichever connection completes each `every`-th
/// request.
fn drive(
    address: SocketAddr,
    request: &[u8],
    connections: usize,
    threads: usize,
    requests: u64,
    progress: Option<(u64, &(dyn Fn(u64) + Sync))>,
) -> Result<()> {
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let mine = connections / threads + usize::from(thread < connections % threads);
                let done = &done;
                scope.spawn(move || -> Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let asking =
                        (0..mine).map(|_| keep_asking(address, request, requests, done, progress));
                    runtime.block_on(futures::future::try_join_all(asking))?;
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().map_err(|_| "a load thread panicked")?)
    })
}

/// One connection of [`drive`]: asks until `done` counts `requests` answers.
async fn keep_asking(
    address: SocketAddr,
    request: &[u8],
    requests: u64,
    done: &AtomicU64,
    progress: Option<(u64, &(dyn Fn(u64) + Sync))>,
) -> Result<()> {
    let mut connection = Connection::open(address).await?;
    loop {
        if done.load(Ordering::Relaxed) >= requests {
            return Ok(());
        }
        connection.exchange(request).await?;
        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((every, report)) = progress
            && finished.is_multiple_of(every)
        {
            report(finished);
        }
    }
}

/// One load of the comparison.
struct Load {
    name: &'static str,
    address: SocketAddr,
    path: &'static str,
    token: Option<String>,
    /// The request as the built-in client sends it.
    request: Arc<[u8]>,
    rates: Vec<f64>,
}

impl Load {
    fn new(
        name: &'static str,
        address: SocketAddr,
        path: &'static str,
        token: Option<&str>,
    ) -> Self {
        Self {
            name,
            address,
            path,
            token: token.map(str::to_owned),
            request: request(path, address, token),
            rates: Vec::new(),
        }
    }
}

/// Requests per second of `load` under wrk (the measure: wrk is what others run), after
/// a second of warm-up; every answer must be a 2xx.
fn wrk(load: &Load, connections: usize, threads: usize, seconds: u64) -> Result<f64> {
    let url = format!("http://{}{}", load.address, load.path);
    let run = |duration: &str| -> Result<String> {
        let mut command = std::process::Command::new("wrk");
        command.args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{duration}"),
        ]);
        if let Some(token) = &load.token {
            command.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let output = command
            .arg(&url)
            .output()
            .map_err(|err| format!("wrk could not run ({err}); install it: apt-get install wrk"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
            return Err(format!("wrk on {url}: {text}").into());
        }
        Ok(text)
    };
    run("1s")?;
    let text = run(&format!("{seconds}s"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse().ok())
        .ok_or_else(|| format!("no rate in wrk's output: {text}").into())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Registers a user on Portcullis and logs in: the token of `/protected/user`.
fn access_token(address: SocketAddr) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://{address}");
        let email = format!("ceiling-{}@example.com", std::process::id());
        let body = serde_json::json!({"email": email, "password": PASSWORD});
        let registered = client
            .post(format!("{base}/auth/register"))
            .json(&body)
            .send()
            .await?;
        if !registered.status().is_success() {
            return Err(format!("registration answered {}", registered.status()).into());
        }
        log_in(&base, &email, PASSWORD).await
    })
}

/// Single-connection round trips of `request`, one after the other.
fn round_trips(address: SocketAddr, request: &[u8], count: usize) -> Result<Vec<Duration>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut connection = Connection::open(address).await?;
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            connection.exchange(request).await?;
            times.push(started.elapsed());
        }
        Ok(times)
    })
}

/// Allocations per request over `requests` requests, in ten equal windows.
fn allocations_per_request(
    load: &Load,
    requests: u64,
    connections: usize,
    threads: usize,
) -> Result<Vec<f64>> {
    let window = (requests / 10).max(1);
    // Warm-up: pools, caches and the metrics' series exist before counting starts.
    drive(
        load.address,
        &load.request,
        connections,
        threads,
        window,
        None,
    )?;
    let marks = std::sync::Mutex::new(vec![(0, 0)]);
    let report = |finished: u64| {
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        marks
            .lock()
            .expect("only this closure locks it")
            .push((finished, allocations));
    };
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let outcome = drive(
        load.address,
        &load.request,
        connections,
        threads,
        window * 10,
        Some((window, &report)),
    );
    COUNTING.store(false, Ordering::Relaxed);
    outcome?;
    let mut marks = marks.into_inner().expect("no thread holds it");
    marks.sort_unstable();
    Ok(marks
        .windows(2)
        .map(|pair| {
            let ((from, before), (to, after)) = (pair[0], pair[1]);
            (after - before) as f64 / (to - from) as f64
        })
        .collect())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn main() -> Result<()> {
    let rounds: usize = setting("CEILING_ROUNDS", 7);
    let seconds: u64 = setting("CEILING_SECONDS", 3);
    let connections: usize = setting("CEILING_CONNECTIONS", 32);
    let threads: usize = setting("CEILING_THREADS", 2);
    let latency_requests: usize = setting("CEILING_LATENCY_REQUESTS", 50_000);
    let allocation_requests: u64 = setting("CEILING_ALLOCATION_REQUESTS", 1_000_000);
    let log_level: String = setting("CEILING_LOG_LEVEL", "info".to_owned());

    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ceiling");
    std::fs::create_dir_all(&folder)?;
    let database = folder.join("ceiling.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    let database_url = std::env::var("CEILING_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}?mode=rwc", database.display()));
    let log = folder.join("portcullis.log");
    // The log (one line per request at `info`) goes to a file, as a deployment ships it, and
    // this process's stderr with it: the figures go to stdout.
    let log_file = std::fs::File::create(&log)?;
    // SAFETY: dup2 on two open descriptors; fd 2 is replaced atomically.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log_file), 2) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    for (name, value) in [
        ("DATABASE_URL", database_url.as_str()),
        ("SECRET_KEY", SECRET),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("METRICS_LISTEN", "127.0.0.1:0"),
        ("LOG_LEVEL", log_level.as_str()),
    ] {
        // SAFETY: no other thread runs yet: both runtimes are built after this.
        unsafe { std::env::set_var(name, value) };
    }

    let (_bare_runtime, bare) = start_bare_poem()?;
    let (_portcullis_runtime, portcullis) = start_portcullis()?;
    let token = access_token(portcullis)?;
    println!(
        "Ceiling: bare poem at {bare}, Portcullis (production profile, log level {log_level}, \
         log in {}) at {portcullis}; {connections} connections on {threads} threads, \
         {rounds} rounds of {seconds} s",
        log.display()
    );

    let mut loads = [
        Load::new("bare poem   GET /public", bare, "/public", None),
        Load::new("Portcullis  GET /public", portcullis, "/public", None),
        Load::new(
            "Portcullis  GET /protected/user",
            portcullis,
            "/protected/user",
            Some(&token),
        ),
    ];
    for round in 0..rounds {
        // Each round starts with the next load, so none is always first after a pause.
        for offset in 0..loads.len() {
            let load = &mut loads[(round + offset) % 3];
            load.rates.push(wrk(load, connections, threads, seconds)?);
        }
        println!(
            "  round {}: {}",
            round + 1,
            loads
                .iter()
                .map(|load| format!("{:.0}/s", load.rates[round]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let bare_rate = median(&loads[0].rates);
    println!("\nRequests per second (median of {rounds} rounds):");
    for load in &loads {
        let rate = median(&load.rates);
        println!(
            "  {:<34} {:>9.0}/s  {:>5.1}% of bare poem",
            load.name,
            rate,
            100.0 * rate / bare_rate
        );
    }

    // Single connection: alternate the two in slices, so a disturbance hits both alike.
    let slices = 10;
    let per_slice = (latency_requests / slices).max(1);
    let (mut bare_times, mut user_times) = (Vec::new(), Vec::new());
    round_trips(bare, &loads[0].request, 1_000)?;
    round_trips(portcullis, &loads[2].request, 1_000)?;
    for _ in 0..slices {
        bare_times.extend(round_trips(bare, &loads[0].request, per_slice)?);
        user_times.extend(round_trips(portcullis, &loads[2].request, per_slice)?);
    }
    bare_times.sort_unstable();
    user_times.sort_unstable();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let (bare_p50, user_p50) = (
        micros(percentile(&bare_times, 50.0)),
        micros(percentile(&user_times, 50.0)),
    );
    println!("\nOne connection, {} requests each:", bare_times.len());
    println!(
        "  bare poem   GET /public          p50 {bare_p50:>6.1} µs  p99 {:>6.1} µs",
        micros(percentile(&bare_times, 99.0))
    );
    println!(
        "  Portcullis  GET /protected/user  p50 {user_p50:>6.1} µs  p99 {:>6.1} µs",
        micros(percentile(&user_times, 99.0))
    );

    println!("\nAllocations per request, {allocation_requests} requests in ten windows:");
    let mut growth = Vec::new();
    for load in &loads {
        let windows = allocations_per_request(load, allocation_requests, connections, threads)?;
        let mean = |half: &[f64]| half.iter().sum::<f64>() / half.len() as f64;
        let (first, last) = windows.split_at(windows.len() / 2);
        let (first, last) = (mean(first), mean(last));
        println!(
            "  {:<34} first half {first:>6.2}  second half {last:>6.2}  windows {}",
            load.name,
            windows
                .iter()
                .map(|w| format!("{w:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if load.address == portcullis {
            growth.push(last - first);
        }
    }

    let public_ratio = median(&loads[1].rates) / bare_rate;
    let user_ratio = median(&loads[2].rates) / bare_rate;
    let latency_gap = user_p50 - bare_p50;
    // Portcullis's, half against half; under a twentieth of an allocation per request (the
    // windows' edges are approximate by the requests in flight).
    let flat = growth.iter().all(|grown| *grown < 0.05);
    println!("\nTargets:");
    println!(
        "  GET /public at least 85% of bare poem:            {:>5.1}%  {}",
        100.0 * public_ratio,
        verdict(public_ratio >= 0.85)
    );
    println!(
        "  GET /protected/user at least 75% of bare poem:    {:>5.1}%  {}",
        100.0 * user_ratio,
        verdict(user_ratio >= 0.75)
    );
    println!(
        "  one-connection p50 within 20 µs of bare /public:  {latency_gap:>+5.1} µs  {}",
        verdict(latency_gap <= 20.0)
    );
    println!(
        "  no growth of allocations per request:             {}",
        verdict(flat)
    );
    Ok(())
}
