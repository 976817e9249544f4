//! Who is calling: the client's address and user agent, as recorded on sessions.

use std::net::IpAddr;

use poem::Request;
use poem::http::header;

use crate::domain::ClientInfo;

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpAddr>);

impl TrustedProxies {
    /// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries further
    /// left were written by the client and prove nothing.
    pub fn client_ip(&self, req: &Request) -> Option<IpAddr> {
        let peer = req.remote_addr().as_socket_addr().map(|addr| addr.ip())?;
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        Some(self.resolve(peer, &forwarded))
    }

    fn resolve(&self, peer: IpAddr, forwarded: &[&str]) -> IpAddr {
        if !self.0.contains(&peer) {
            return peer;
        }
        for entry in forwarded.iter().rev() {
            match entry.parse::<IpAddr>() {
                Ok(ip) if self.0.contains(&ip) => continue,
                Ok(ip) => return ip,
                Err(_) => break,
            }
        }
        peer
    }

    /// What a session records about the request.
    pub fn client_info(&self, req: &Request) -> ClientInfo {
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        ClientInfo::new(user_agent, self.client_ip(req).map(|ip| ip.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let proxies = TrustedProxies(vec![ip("10.0.0.1")]);
        assert_eq!(
            proxies.resolve(ip("203.0.113.9"), &["1.2.3.4"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies(vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        let hops = ["6.6.6.6", "198.51.100.7", "10.0.0.2"];
        assert_eq!(proxies.resolve(ip("10.0.0.1"), &hops), ip("198.51.100.7"));
        assert_eq!(
            proxies.resolve(ip("10.0.0.1"), &["garbage"]),
            ip("10.0.0.1")
        );
        assert_eq!(proxies.resolve(ip("10.0.0.1"), &[]), ip("10.0.0.1"));
    }
}
