//! Which address a request comes from, and whether it may post updates.
//!
//! Telegram sends webhooks only from `149.154.160.0/20` and `91.108.4.0/22`. Behind a
//! reverse proxy the socket peer is the proxy, so `X-Forwarded-For` is consulted, but
//! only when the peer is a configured trusted proxy: otherwise anyone could claim to be
//! Telegram by sending the header. The client is the right-most address in
//! `X-Forwarded-For` that is not itself a trusted proxy (proxies append; entries to the
//! left of the first untrusted hop were written by the client and prove nothing).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Telegram's webhook source ranges (the default of `TGPIPE_ALLOWED_CIDRS`).
pub const TELEGRAM_CIDRS: &str = "149.154.160.0/20,91.108.4.0/22";

/// Where requests may come from and which proxies are believed.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    /// `None`: any source is allowed.
    allowed: Option<Vec<IpNet>>,
    trusted_proxies: Vec<IpNet>,
}

/// Why a CIDR list is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an IP address or CIDR range")]
pub struct CidrError(pub String);

/// Parses a comma-separated list of CIDRs or bare addresses.
pub fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, CidrError> {
    tgpipe_shared::config::split_list(list)
        .into_iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| CidrError(s.to_owned()))
        })
        .collect()
}

/// Why a request is refused on its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceError {
    /// The client address is outside the allowed ranges.
    NotAllowed(IpAddr),
    /// A trusted proxy sent an `X-Forwarded-For` that does not parse.
    BadForwardedFor,
}

impl IpPolicy {
    /// A policy from `TGPIPE_ALLOWED_CIDRS` (`any` allows every source) and
    /// `TGPIPE_TRUSTED_PROXIES`.
    pub fn new(allowed: &str, trusted_proxies: &str) -> Result<IpPolicy, CidrError> {
        let allowed = if allowed.trim().eq_ignore_ascii_case("any") {
            None
        } else {
            let nets = parse_cidrs(allowed)?;
            if nets.is_empty() {
                return Err(CidrError(allowed.to_owned()));
            }
            Some(nets)
        };
        Ok(IpPolicy {
            allowed,
            trusted_proxies: parse_cidrs(trusted_proxies)?,
        })
    }

    /// A policy that allows every source and trusts no proxy.
    pub fn allow_any() -> IpPolicy {
        IpPolicy::default()
    }

    /// Whether a connection from socket peer `peer` may be served at all: it is in the
    /// allowed ranges, or a trusted proxy (which forwards requests of other clients, each
    /// checked on its own). Any other peer is closed at accept, before it costs a slot.
    pub fn admits_peer(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.is_trusted(peer)
            || self
                .allowed
                .as_ref()
                .is_none_or(|nets| nets.iter().any(|n| n.contains(&peer)))
    }

    /// Whether socket peer `peer` is a trusted proxy (whose connections carry many
    /// clients, so no per-address cap applies to it).
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.is_trusted(canonical(peer))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request from socket peer `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, SourceError> {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        // Walk every X-Forwarded-For header from the right: the last header line holds
        // the hops appended last.
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let value = value.to_str().map_err(|_| SourceError::BadForwardedFor)?;
            for hop in value.rsplit(',') {
                let hop = hop.trim();
                if hop.is_empty() {
                    continue;
                }
                let ip = parse_hop(hop).ok_or(SourceError::BadForwardedFor)?;
                client = ip;
                if !self.is_trusted(ip) {
                    return Ok(ip);
                }
            }
        }
        Ok(client)
    }

    /// Checks a request's source: the client address if it is allowed.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, SourceError> {
        let ip = self.client_ip(peer, headers)?;
        match &self.allowed {
            Some(nets) if !nets.iter().any(|n| n.contains(&ip)) => Err(SourceError::NotAllowed(ip)),
            _ => Ok(ip),
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` hop: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn telegram_ranges_by_default() {
        let p = IpPolicy::new(TELEGRAM_CIDRS, "").unwrap();
        assert!(p.check(ip("149.154.167.220"), &HeaderMap::new()).is_ok());
        assert!(p.check(ip("91.108.6.1"), &HeaderMap::new()).is_ok());
        assert!(
            p.check(ip("::ffff:149.154.160.1"), &HeaderMap::new())
                .is_ok()
        );
        assert_eq!(
            p.check(ip("8.8.8.8"), &HeaderMap::new()),
            Err(SourceError::NotAllowed(ip("8.8.8.8")))
        );
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_ignored() {
        let p = IpPolicy::new(TELEGRAM_CIDRS, "").unwrap();
        let spoofed = xff(&["149.154.167.220"]);
        assert_eq!(
            p.check(ip("6.6.6.6"), &spoofed),
            Err(SourceError::NotAllowed(ip("6.6.6.6")))
        );
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let p = IpPolicy::new(TELEGRAM_CIDRS, "10.0.0.0/8").unwrap();
        // The client prepended a fake Telegram address; the proxy appended the real one.
        let h = xff(&["149.154.167.220, 6.6.6.6"]);
        assert_eq!(
            p.check(ip("10.1.1.1"), &h),
            Err(SourceError::NotAllowed(ip("6.6.6.6")))
        );
        let h = xff(&["1.1.1.1, 149.154.167.220, 10.0.0.9"]);
        assert_eq!(p.check(ip("10.1.1.1"), &h), Ok(ip("149.154.167.220")));
        let h = xff(&["6.6.6.6", "149.154.167.220:4431"]);
        assert_eq!(p.check(ip("10.1.1.1"), &h), Ok(ip("149.154.167.220")));
        // Only proxies in the chain: the left-most one is the best we know.
        let h = xff(&["10.0.0.5"]);
        assert_eq!(p.client_ip(ip("10.1.1.1"), &h), Ok(ip("10.0.0.5")));
        // No header at all: the proxy itself.
        assert_eq!(
            p.client_ip(ip("10.1.1.1"), &HeaderMap::new()),
            Ok(ip("10.1.1.1"))
        );
    }

    #[test]
    fn garbage_forwarded_for_from_a_trusted_proxy_is_refused() {
        let p = IpPolicy::new("any", "10.0.0.0/8").unwrap();
        assert_eq!(
            p.check(ip("10.1.1.1"), &xff(&["not-an-ip"])),
            Err(SourceError::BadForwardedFor)
        );
    }

    #[test]
    fn any_disables_the_check() {
        let p = IpPolicy::new("any", "").unwrap();
        assert!(p.check(ip("8.8.8.8"), &HeaderMap::new()).is_ok());
    }

    #[test]
    fn bad_cidrs() {
        assert!(IpPolicy::new("149.154.160.0/33", "").is_err());
        assert!(IpPolicy::new("", "").is_err());
        assert!(IpPolicy::new("any", "nope").is_err());
        assert_eq!(
            parse_cidrs("127.0.0.1").unwrap()[0].to_string(),
            "127.0.0.1/32"
        );
    }
}
