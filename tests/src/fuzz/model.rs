//! The fuzzer's own reading of a frame, written from the README's rules and
//! sharing no code with the datapath's parser: what kind of packet it is
//! for policy, and which of its checksums hold.

use netpath_common::{
    conntrack::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, TCP_ACK, TCP_RST, TCP_SYN},
    CtKey4, FragKey4,
};

use crate::frames::{checksum, ETH_P_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_LEN: usize = 14;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Ports and identifiers as the datapath's keys hold them: wire bytes.
fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

pub fn ethertype(f: &[u8]) -> Option<u16> {
    (f.len() >= ETH_LEN).then(|| be16(f, 12))
}

/// Source and destination of an IPv4 frame with a whole fixed header.
pub fn ipv4_addrs(f: &[u8]) -> Option<([u8; 4], [u8; 4])> {
    (ethertype(f) == Some(ETH_P_IPV4) && f.len() >= ETH_LEN + 20)
        .then(|| (addr(f, ETH_LEN + 12), addr(f, ETH_LEN + 16)))
}

/// A packet that starts (or belongs to) a flow of ports or echo identifiers,
/// or of addresses and protocol only.
#[derive(Clone, Debug)]
pub struct Flow {
    pub key: CtKey4,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// TCP, UDP or ICMP echo: the key has ports (or an identifier).
    pub ported: bool,
}

impl Flow {
    /// A lone SYN, an echo request, anything of a protocol without
    /// connection state.
    pub fn starts_flow(&self) -> bool {
        match self.key.proto {
            IPPROTO_TCP => self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
            IPPROTO_ICMP => self.icmp_type == ICMP_ECHO_REQUEST,
            _ => true,
        }
    }

    /// What a rule's port range matches: the destination port of this
    /// packet (`own`) or, for the flow's packets the other way, the source
    /// port; for echo the message type (the other way: its counterpart).
    pub fn policy_port(&self, own: bool) -> u16 {
        match self.key.proto {
            IPPROTO_ICMP if own => self.icmp_type as u16,
            IPPROTO_ICMP if self.icmp_type == ICMP_ECHO_REQUEST => ICMP_ECHO_REPLY as u16,
            IPPROTO_ICMP => ICMP_ECHO_REQUEST as u16,
            _ if !self.ported => 0,
            _ if own => u16::from_be(self.key.dport),
            _ => u16::from_be(self.key.sport),
        }
    }
}

/// What a frame is, for the policy hooks.
#[derive(Clone, Debug)]
pub enum Class {
    /// Shorter than an Ethernet header.
    Short,
    NotIpv4(u16),
    /// Why it cannot be understood.
    Malformed(&'static str),
    /// A fragment other than the first: its datagram's key (scope unset).
    LaterFragment(FragKey4),
    /// An ICMP error (unreachable, time exceeded, parameter problem): the
    /// tuple of the packet it quotes, as that packet travelled, or why there
    /// is none worth tracking.
    IcmpError(Result<CtKey4, &'static str>),
    /// ICMP that is neither echo nor an error: addresses, protocol, type.
    IcmpOther(CtKey4),
    Flow(Flow),
}

/// Bytes of the L4 header the rules need to see whole.
fn l4_header_len(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        _ => 0,
    }
}

/// Reads a frame as a receiver that honours every header field would.
/// Anything short of that is `Malformed`, including headers that the frame
/// holds only in bytes past the IP total length (padding).
pub fn classify(f: &[u8]) -> Class {
    let Some(ethertype) = ethertype(f) else { return Class::Short };
    if ethertype != ETH_P_IPV4 {
        return Class::NotIpv4(ethertype);
    }
    let ip = &f[ETH_LEN..];
    if ip.len() < 20 {
        return Class::Malformed("IPv4 header cut short");
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[0] >> 4 != 4 {
        return Class::Malformed("IP version is not 4");
    }
    if ihl < 20 {
        return Class::Malformed("IHL below 5");
    }
    if ip.len() < ihl {
        return Class::Malformed("IP options run past the frame");
    }
    let total = be16(ip, 2) as usize;
    if total < ihl {
        return Class::Malformed("IP total length shorter than the IP header");
    }
    let frag = be16(ip, 6);
    let (proto, src, dst) = (ip[9], addr(ip, 12), addr(ip, 16));
    if frag & IP_OFFSET != 0 {
        return Class::LaterFragment(FragKey4 { saddr: src, daddr: dst, id: ne16(ip, 4), proto, scope: 0, _pad: [] });
    }
    let l4 = &ip[ihl..];
    let need = l4_header_len(proto);
    if l4.len() < need {
        return Class::Malformed("L4 header cut short");
    }
    if total - ihl < need {
        return Class::Malformed("L4 header past the IP total length");
    }
    let flow = |sport, dport, tcp_flags, icmp_type, ported| {
        let key = CtKey4 { icmp_type, ..CtKey4::new(src, dst, sport, dport, proto) };
        Class::Flow(Flow { key, tcp_flags, icmp_type, ported })
    };
    match proto {
        IPPROTO_TCP => flow(ne16(l4, 0), ne16(l4, 2), l4[13], 0, true),
        IPPROTO_UDP => flow(ne16(l4, 0), ne16(l4, 2), 0, 0, true),
        IPPROTO_ICMP => match l4[0] {
            ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => flow(ne16(l4, 4), ne16(l4, 4), 0, l4[0], true),
            3 | 11 | 12 => Class::IcmpError(quoted(&l4[8..])),
            kind => Class::IcmpOther(CtKey4 { icmp_type: kind, ..CtKey4::new(src, dst, 0, 0, proto) }),
        },
        _ => flow(0, 0, 0, 0, false),
    }
}

/// The tuple of the packet an ICMP error quotes (starting at its IP
/// header), if it is one netpath tracks and the quote holds all of it.
fn quoted(inner: &[u8]) -> Result<CtKey4, &'static str> {
    if inner.len() < 20 {
        return Err("quoted IP header cut short");
    }
    let ihl = (inner[0] & 0x0f) as usize * 4;
    if inner[0] >> 4 != 4 || ihl < 20 {
        return Err("quoted header is not IPv4");
    }
    let (proto, src, dst) = (inner[9], addr(inner, 12), addr(inner, 16));
    let l4 = inner.get(ihl..).unwrap_or_default();
    match proto {
        IPPROTO_TCP | IPPROTO_UDP if l4.len() >= 4 => Ok(CtKey4::new(src, dst, ne16(l4, 0), ne16(l4, 2), proto)),
        IPPROTO_ICMP if l4.len() >= 6 && (l4[0] == ICMP_ECHO_REQUEST || l4[0] == ICMP_ECHO_REPLY) => {
            Ok(CtKey4 { icmp_type: l4[0], ..CtKey4::new(src, dst, ne16(l4, 4), ne16(l4, 4), proto) })
        }
        IPPROTO_ICMP if l4.first().is_some_and(|t| *t != ICMP_ECHO_REQUEST && *t != ICMP_ECHO_REPLY) => {
            Err("quotes ICMP other than echo")
        }
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP => Err("quoted ports cut short"),
        _ => Err("quotes a protocol without ports"),
    }
}

/// Which checksums of a frame could be verified, and whether they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    /// The IPv4 header's.
    pub ip: Option<bool>,
    /// TCP, UDP (0: none, which holds) or ICMP, over the whole datagram.
    pub l4: Option<bool>,
    /// The IPv4 header an ICMP error quotes.
    pub inner_ip: Option<bool>,
    /// The quoted packet's L4 checksum, when the quote holds all of it.
    pub inner_l4: Option<bool>,
}

impl Sums {
    pub fn fields(&self) -> [(&'static str, Option<bool>); 4] {
        [("IP header", self.ip), ("L4", self.l4), ("quoted IP header", self.inner_ip), ("quoted L4", self.inner_l4)]
    }

    /// Every checksum that could be verified holds (and at least one could).
    pub fn all_valid(&self) -> bool {
        self.ip == Some(true) && self.fields().iter().all(|(_, v)| *v != Some(false))
    }
}

/// The L4 checksum of a whole, unfragmented datagram (`ip`: its IP
/// header and what the total length covers).
fn l4_valid(ip: &[u8], ihl: usize) -> Option<bool> {
    let (proto, src, dst) = (ip[9], addr(ip, 12), addr(ip, 16));
    let seg = &ip[ihl..];
    if seg.len() < l4_header_len(proto) {
        return None;
    }
    match proto {
        IPPROTO_TCP => Some(crate::frames::l4_checksum(src, dst, proto, seg) == 0),
        IPPROTO_UDP => Some(be16(seg, 6) == 0 || crate::frames::l4_checksum(src, dst, proto, seg) == 0),
        IPPROTO_ICMP => Some(checksum(seg) == 0),
        _ => None,
    }
}

/// An IPv4 packet (no Ethernet header), cut to its total length if the
/// bytes hold it: (packet, header length, unfragmented and whole).
fn datagram(ip: &[u8]) -> Option<(&[u8], usize, bool)> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = be16(ip, 2) as usize;
    let whole = total >= ihl && total <= ip.len() && be16(ip, 6) & (IP_MF | IP_OFFSET) == 0;
    Some((if whole { &ip[..total] } else { &ip[..ihl] }, ihl, whole))
}

pub fn sums(f: &[u8]) -> Sums {
    let mut s = Sums::default();
    if ethertype(f) != Some(ETH_P_IPV4) {
        return s;
    }
    let Some((ip, ihl, whole)) = datagram(&f[ETH_LEN..]) else { return s };
    s.ip = Some(checksum(&ip[..ihl]) == 0);
    if !whole {
        return s;
    }
    s.l4 = l4_valid(ip, ihl);
    let seg = &ip[ihl..];
    let is_error = ip[9] == IPPROTO_ICMP && seg.len() >= 8 && matches!(seg[0], 3 | 4 | 5 | 11 | 12);
    if let Some((inner, inner_ihl, inner_whole)) = is_error.then(|| datagram(&seg[8..])).flatten() {
        s.inner_ip = Some(checksum(&inner[..inner_ihl]) == 0);
        if inner_whole {
            s.inner_l4 = l4_valid(inner, inner_ihl);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames;

    const A: [u8; 4] = [10, 0, 0, 2];
    const B: [u8; 4] = [203, 0, 113, 2];

    fn tcp_frame(flags: u8) -> Vec<u8> {
        let l4 = frames::tcp(A, B, 40000, 443, flags, b"x");
        frames::eth([1; 6], [2; 6], ETH_P_IPV4, &frames::ipv4(A, B, IPPROTO_TCP, &[], &l4))
    }

    #[test]
    fn a_syn_is_a_flow_that_starts() {
        let Class::Flow(f) = classify(&tcp_frame(0x02)) else { panic!("not a flow") };
        assert!(f.starts_flow() && f.ported);
        assert_eq!((f.policy_port(true), f.policy_port(false)), (443, 40000));
        assert_eq!(f.key.sport, 40000u16.to_be());
        let Class::Flow(f) = classify(&tcp_frame(0x12)) else { panic!("not a flow") };
        assert!(!f.starts_flow());
    }

    #[test]
    fn headers_past_the_total_length_are_malformed() {
        let mut f = tcp_frame(0x02);
        f[ETH_LEN + 3] = 24; // 4 bytes of TCP; the rest is padding
        assert!(matches!(classify(&f), Class::Malformed("L4 header past the IP total length")));
        assert!(matches!(classify(&tcp_frame(0x02)[..ETH_LEN + 30]), Class::Malformed("L4 header cut short")));
    }

    #[test]
    fn checksums_are_read_per_field() {
        let f = tcp_frame(0x02);
        assert!(sums(&f).all_valid());
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(sums(&bad).l4, Some(false));
        assert_eq!(sums(&bad).ip, Some(true));
        assert_eq!(sums(&f[..f.len() - 1]).l4, None, "a cut datagram has no verifiable L4 checksum");
        let quoted = &f[ETH_LEN..ETH_LEN + 28];
        let err =
            frames::eth([1; 6], [2; 6], ETH_P_IPV4, &frames::ipv4(B, A, 1, &[], &frames::icmp_error(3, 3, 0, quoted)));
        let s = sums(&err);
        assert_eq!((s.ip, s.l4, s.inner_ip, s.inner_l4), (Some(true), Some(true), Some(true), None));
        assert!(matches!(classify(&err), Class::IcmpError(Ok(k)) if k.dport == 443u16.to_be()));
    }
}
