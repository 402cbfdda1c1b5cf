//! Which gateway to ask, and from which local address: the IPv4 default route of this network
//! namespace (`/proc/net/route`), and the source address the kernel picks towards it.
use std::net::{Ipv4Addr, SocketAddr};

/// The gateway of the IPv4 default route with the lowest metric, from `/proc/net/route`.
pub fn default_gateway() -> std::io::Result<Option<Ipv4Addr>> {
    let text = std::fs::read_to_string("/proc/net/route")?;
    Ok(parse_default_gateway(&text))
}

/// Parses `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`,
/// addresses as little-endian hex.
pub fn parse_default_gateway(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
            let (dest, gw, flags, metric, mask) =
                (hex(1)?, hex(2)?, hex(3)?, f.get(6)?.parse::<u32>().ok()?, hex(7)?);
            let up = flags & RTF_UP != 0 && flags & RTF_GATEWAY != 0;
            (dest == 0 && mask == 0 && up && gw != 0).then(|| (metric, Ipv4Addr::from(u32::from_be(gw))))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

/// The local address the kernel uses to reach `gateway` (no packet is sent).
pub fn local_address_towards(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((gateway, 5351))?;
    match socket.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(std::io::Error::other("an IPv6 source address for an IPv4 gateway")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                    wlan0\t00000000\t0102A8C0\t0003\t0\t0\t50\t00000000\t0\t0\t0\n\
                    eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_default_gateway(text), Some(Ipv4Addr::new(192, 168, 2, 1)));
        let no_default = "Iface\tDestination\tGateway\n eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(parse_default_gateway(no_default), None);
        assert_eq!(parse_default_gateway("garbage\n\u{0}\u{1} zz"), None);
    }
}
