//! A small SMTP server for the mail tests: it speaks the protocol (RFC 5321: greeting, EHLO,
//! MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP, QUIT) over real TCP to the service's real
//! SMTP client, keeps every message it accepts, and can be stopped and started again on the
//! same port to stage an outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub to: Vec<String>,
    /// The message as sent after DATA, dot-stuffing undone.
    pub data: String,
}

impl Received {
    /// The message's text with quoted-printable soft breaks and escapes undone, so that a
    /// link can be read out of it whatever transfer encoding the client chose.
    pub fn text(&self) -> String {
        decode_quoted_printable(&self.data)
    }

    /// The token of the first link to `path` (`/console/reset` ...) in the message.
    pub fn token(&self, path: &str) -> Option<String> {
        let text = self.text();
        let start = text.find(&format!("{path}?token="))? + path.len() + "?token=".len();
        Some(
            text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect(),
        )
    }

    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|line| line.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_owned()
    }
}

fn decode_quoted_printable(data: &str) -> String {
    let joined = data.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server: its port, and what it received.
pub struct SmtpServer {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl SmtpServer {
    /// Listens on a free port.
    pub async fn start() -> Self {
        Self::on(0).await
    }

    /// Listens on `port` (0: any free one).
    pub async fn on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the SMTP test server");
        let port = listener.local_addr().expect("address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let task = tokio::spawn(accept(
            listener,
            Arc::clone(&received),
            Arc::clone(&arrived),
        ));
        Self {
            port,
            received,
            arrived,
            task: Some(task),
        }
    }

    /// `smtp://127.0.0.1:PORT`: plain SMTP, as to a local relay.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every open connection: the mail server is down.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received_since(0)
    }

    /// What was received after the first `seen` messages (a caller that polls a busy server
    /// copies only what is new).
    pub fn received_since(&self, seen: usize) -> Vec<Received> {
        let received = self.received.lock().expect("received");
        received.get(seen..).unwrap_or_default().to_vec()
    }

    /// Forgets every message to `to`, so that a long run keeps only what it may still wait for.
    #[allow(dead_code)] // the soak's; the tests keep everything
    pub fn forget(&self, to: &str) {
        self.received
            .lock()
            .expect("received")
            .retain(|m| !m.to.iter().any(|r| r.eq_ignore_ascii_case(to)));
    }

    /// Waits until a message to `to` with `subject` has arrived (at most `within`), and returns
    /// the last such one.
    pub async fn wait_for_subject(&self, to: &str, subject: &str, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            if let Some(found) =
                self.received().into_iter().rev().find(|m| {
                    m.subject() == subject && m.to.iter().any(|r| r.eq_ignore_ascii_case(to))
                })
            {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no mail to {to} about {subject:?} within {within:?}; got {:?}",
                    self.received()
                );
            }
        }
    }

    /// Waits until a message to `to` has arrived (at most `within`), and returns the last one.
    pub async fn wait_for(&self, to: &str, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            if let Some(found) = self
                .received()
                .into_iter()
                .rev()
                .find(|m| m.to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no mail to {to} within {within:?}; got {:?}",
                    self.received()
                );
            }
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, received: Arc<Mutex<Vec<Received>>>, arrived: Arc<Notify>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        connections.spawn(session(stream, Arc::clone(&received), Arc::clone(&arrived)));
    }
}

async fn reply(writer: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    writer.write_all(text.as_bytes()).await.is_ok()
}

/// One SMTP conversation; several messages may pass on it.
async fn session(stream: TcpStream, received: Arc<Mutex<Vec<Received>>>, arrived: Arc<Notify>) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader);
    if !reply(&mut writer, "220 localhost test SMTP\r\n").await {
        return;
    }
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_ascii_uppercase();
        let answer = if command.starts_with("EHLO") {
            "250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if command.starts_with("HELO") || command.starts_with("NOOP") {
            "250 OK\r\n"
        } else if command.starts_with("MAIL FROM:") || command.starts_with("RSET") {
            to.clear();
            "250 OK\r\n"
        } else if let Some(rest) = command.strip_prefix("RCPT TO:") {
            let address = line.trim_end()["RCPT TO:".len()..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or(rest)
                .to_owned();
            to.push(address);
            "250 OK\r\n"
        } else if command == "DATA" {
            if !reply(&mut writer, "354 End data with <CR><LF>.<CR><LF>\r\n").await {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            received.lock().expect("received").push(Received {
                to: std::mem::take(&mut to),
                data,
            });
            arrived.notify_waiters();
            "250 OK queued\r\n"
        } else if command == "QUIT" {
            let _ = reply(&mut writer, "221 Bye\r\n").await;
            return;
        } else {
            "502 Command not implemented\r\n"
        };
        if !reply(&mut writer, answer).await {
            return;
        }
    }
}
