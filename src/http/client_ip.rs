//! The client's address behind a reverse proxy. `X-Forwarded-For` is believed only when the
//! peer is a trusted proxy (`TRUSTED_PROXIES`, default `127.0.0.1,::1`): the header is read
//! from the right, skipping trusted hops, and the first untrusted address is the client.
//! Anyone can send the header, so from an untrusted peer it is ignored.

use std::net::IpAddr;

/// An address range: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a list of ranges, refusing the first bad one.
pub(crate) fn parse_list(items: &[String]) -> Result<Vec<Cidr>, String> {
    items.iter().map(|s| Cidr::parse(s)).collect()
}

/// The client address for a request from `peer` carrying `forwarded_for` (the values of every
/// `X-Forwarded-For` header, in order).
pub(crate) fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // An entry that is not an address ends the trustworthy part of the chain.
        let Ok(hop) = hop.parse::<IpAddr>().map(canonical) else {
            break;
        };
        client = hop;
        if !trusted.iter().any(|c| c.contains(hop)) {
            break;
        }
    }
    client
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn defaults() -> Vec<Cidr> {
        parse_list(&["127.0.0.1".into(), "::1".into()]).unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped IPv6");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("::1").unwrap().contains(ip("::2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let t = defaults();
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["203.0.113.7"], &t),
            ip("203.0.113.7")
        );
        // An untrusted peer cannot claim another address.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &["203.0.113.7"], &t),
            ip("198.51.100.1")
        );
        // Spoofed entries to the left of the last untrusted hop are ignored.
        assert_eq!(
            client_ip(ip("::1"), &["1.1.1.1, 203.0.113.7", "127.0.0.1"], &t),
            ip("203.0.113.7")
        );
        // No header, or garbage: the peer.
        assert_eq!(client_ip(ip("127.0.0.1"), &[], &t), ip("127.0.0.1"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["not-an-ip"], &t),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["garbage, 203.0.113.9"], &t),
            ip("203.0.113.9")
        );
    }
}
