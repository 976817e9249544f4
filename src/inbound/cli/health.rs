//! `portcullis health`: one HTTP/1.1 GET to a running server, for health checks in an image
//! that has no curl. Plain http only: it asks the server on its own host, not through TLS.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::Settings;

/// The whole exchange, connection included, must fit in this.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `/health` (or `/ready`) of the server at `url`, or on this host's port, and fails with
/// one line unless it answers 200.
pub(super) async fn check(
    ready: bool,
    url: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<()> {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{}:{}", local_host(&settings.host), settings.port),
    };
    let path = if ready { "/ready" } else { "/health" };
    let target = Target::parse(&base, path)?;
    let status = tokio::time::timeout(TIMEOUT, target.status())
        .await
        .with_context(|| format!("{base}{path} did not answer within {} s", TIMEOUT.as_secs()))?
        .with_context(|| format!("{base}{path}"))?;
    if status != 200 {
        bail!("{base}{path} answered {status}");
    }
    println!("{base}{path}: 200");
    Ok(())
}

/// Where a server bound to `host` can be reached from the same machine.
fn local_host(host: &str) -> String {
    match host {
        "0.0.0.0" | "" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        other if other.contains(':') && !other.starts_with('[') => format!("[{other}]"),
        other => other.to_owned(),
    }
}

/// An http URL taken apart: where to connect, and what to ask.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host:port` (`[v6]:port`), as `TcpStream::connect` takes it.
    authority: String,
    host: String,
    path: String,
}

impl Target {
    fn parse(base: &str, path: &str) -> anyhow::Result<Self> {
        let Some(rest) = base.strip_prefix("http://") else {
            bail!(
                "--url must be an http:// URL (the check talks to the server directly, not through TLS)"
            );
        };
        let (host, prefix) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--url {base:?} names no host");
        }
        let has_port = match host.rfind(':') {
            Some(at) => !host[at..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.is_empty() {
            path.to_owned()
        } else {
            format!("/{prefix}{path}")
        };
        Ok(Self {
            authority,
            host: host.to_owned(),
            path,
        })
    }

    /// The status code of a GET.
    async fn status(&self) -> anyhow::Result<u16> {
        let mut stream = TcpStream::connect(self.authority.as_str())
            .await
            .context("no connection")?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 1024 {
            let read = stream.read(&mut buf).await?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&buf[..read]);
        }
        let line = String::from_utf8_lossy(&head);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .context("the answer is not HTTP")?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_where_to_connect_and_what_to_ask() {
        let target = Target::parse("http://127.0.0.1:8000", "/ready").unwrap();
        assert_eq!(target.authority, "127.0.0.1:8000");
        assert_eq!(target.path, "/ready");
        let prefixed = Target::parse("http://auth.internal/portcullis", "/health").unwrap();
        assert_eq!(prefixed.authority, "auth.internal:80");
        assert_eq!(prefixed.host, "auth.internal");
        assert_eq!(prefixed.path, "/portcullis/health");
        let v6 = Target::parse("http://[::1]:8000", "/health").unwrap();
        assert_eq!(v6.authority, "[::1]:8000");
        assert_eq!(v6.host, "[::1]:8000");
        assert!(Target::parse("https://example.com", "/health").is_err());
        assert!(Target::parse("http://", "/health").is_err());
    }

    #[test]
    fn a_wildcard_bind_is_asked_on_the_loopback() {
        assert_eq!(local_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(local_host("::"), "[::1]");
        assert_eq!(local_host("10.0.0.5"), "10.0.0.5");
    }
}
