//! Client networks (`10.0.0.0/8`, `2001:db8::/32`, or one address) for a
//! route's access lists: parsed by the compiler to check them and by the
//! dataplane to match with, so both read them the same way.

use std::fmt;
use std::net::IpAddr;

/// A network: an address with the bits beyond its prefix cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/BITS` or a lone address (all bits). Host bits set
    /// beyond the prefix (`10.1.2.3/8`) are refused: nginx accepts them
    /// with a warning, and they usually mean a typo.
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let value = value.trim();
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (value, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| "must be an IPv4 or IPv6 address, with an optional /prefix")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(bits) => match bits.parse::<u8>() {
                Ok(bits) if bits <= max => bits,
                _ => return Err("has a prefix length beyond the address's bits"),
            },
        };
        let cidr = Self { addr, prefix };
        if cidr.network() != bits(addr) {
            return Err("has address bits set beyond its prefix length");
        }
        Ok(cidr)
    }

    /// True when `ip` lies in the network. An IPv4-mapped IPv6 client
    /// (`::ffff:192.0.2.1`, from a dual-stack socket) counts as its IPv4
    /// address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        masked(bits(ip), self.width(), self.prefix) == self.network()
    }

    fn width(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn network(&self) -> u128 {
        masked(bits(self.addr), self.width(), self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The top `prefix` of `width` bits of `value`.
fn masked(value: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(width - prefix.min(width));
    (value >> keep) << keep
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let net = Cidr::parse("10.0.0.0/8").expect("valid");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.1.1")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!net.contains(ip("2001:db8::1")));
        let one = Cidr::parse("192.0.2.7").expect("valid");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let any = Cidr::parse("0.0.0.0/0").expect("valid");
        assert!(any.contains(ip("203.0.113.9")));
        let v6 = Cidr::parse("2001:db8::/32").expect("valid");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").expect("valid").contains(ip("::1")));
    }

    #[test]
    fn malformed_networks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.1.2.3/8",
            "example.com",
            "10.0.0.0/",
            "::1/129",
            "1.2.3.4/-1",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
