//! Frames for the fuzzer: well-formed ones built from scratch with the
//! addresses a hook sees (so that they get past anti-spoofing and reach
//! policy and NAT), then bent: truncated, padded, fragmented, with options
//! and odd header lengths, odd protocols and ethertypes, ICMP of every type
//! and errors quoting tracked or random tuples, bad checksums, random bytes.

use netpath_common::{CtKey4, HookId};

use super::Rng;
use crate::{
    fixtures::{C1, C1_MAC, C2, C2_MAC, CLIENT, CLIENT_MAC, GATEWAY, GATEWAY_MAC, HOST, HOST_MAC, SERVER},
    frames::{self, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

/// The router beyond the uplink.
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 9];
const BROADCAST: [u8; 6] = [0xff; 6];
const IPPROTO_GRE: u8 = 47;
const L3: usize = 14;

/// Where a frame is going: what the hook it is made for sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Sent by the container (veth ingress).
    ContainerOut,
    /// Delivered to the container (veth egress).
    ContainerIn,
    /// Arriving on the uplink.
    FromOutside,
    /// Leaving through the uplink.
    ToOutside,
}

impl View {
    pub fn of(hook: HookId) -> View {
        match hook {
            HookId::VethIngress => View::ContainerOut,
            HookId::VethEgress => View::ContainerIn,
            HookId::UplinkIngress | HookId::UplinkXdp => View::FromOutside,
            _ => View::ToOutside,
        }
    }

    /// Is this tuple one a packet seen here would carry?
    fn fits(self, k: &CtKey4) -> bool {
        match self {
            View::ContainerOut => k.saddr == C1,
            View::ContainerIn => k.daddr == C1,
            View::FromOutside => k.daddr == HOST,
            View::ToOutside => in_subnet(k.saddr),
        }
    }

    /// Is this the tuple of a packet that an ICMP error seen here would
    /// quote (the error travels back towards the quoted packet's source)?
    fn fits_quoted(self, k: &CtKey4) -> bool {
        match self {
            View::ContainerOut => k.daddr == C1,
            View::ContainerIn => k.saddr == C1,
            View::FromOutside => k.saddr == HOST,
            View::ToOutside => in_subnet(k.daddr),
        }
    }
}

/// In the fixtures' /24 container subnet.
pub fn in_subnet(a: [u8; 4]) -> bool {
    a[..3] == crate::fixtures::SUBNET[..3]
}

/// One test case: frames run in order through the hook (a fragment train
/// has several).
pub struct Case {
    pub kind: &'static str,
    pub frames: Vec<Vec<u8>>,
}

impl Case {
    fn one(kind: &'static str, frame: Vec<u8>) -> Case {
        Case { kind, frames: vec![frame] }
    }
}

/// Tuples tracked in conntrack (any scope, scope cleared), for frames and
/// ICMP errors that belong to known flows.
#[derive(Default)]
pub struct Pools {
    pub tracked: Vec<CtKey4>,
}

impl Pools {
    fn pick(&self, rng: &Rng, fits: impl Fn(&CtKey4) -> bool) -> Option<CtKey4> {
        let both = self.tracked.iter().flat_map(|k| [*k, k.reversed()]);
        let fitting: Vec<CtKey4> = both.filter(|k| fits(k)).collect();
        (!fitting.is_empty()).then(|| fitting[rng.below(fitting.len())])
    }
}

/// Link and IP ends of a frame.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

fn remote(rng: &Rng) -> [u8; 4] {
    match rng.below(14) {
        0 | 1 => SERVER,
        2 | 3 => CLIENT,
        4 => [198, 18, 0, rng.u8()],
        5 => [203, 0, 113, rng.u8()],
        6 => C2,
        7 => GATEWAY,
        8 => HOST,
        9 => [10, 0, 0, rng.u8()],
        10 => [192, 0, 2, rng.u8()],
        11 => rng.pick(&[[0; 4], [255; 4], [127, 0, 0, 1], [224, 0, 0, 1], C1]),
        _ => rng.u32().to_be_bytes(),
    }
}

fn subnet_addr(rng: &Rng) -> [u8; 4] {
    match rng.below(6) {
        0..=2 => C1,
        3 => C2,
        4 => GATEWAY,
        _ => [10, 0, 0, rng.u8()],
    }
}

fn random_mac(rng: &Rng) -> [u8; 6] {
    let b = rng.bytes(6);
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

pub fn ends(rng: &Rng, view: View) -> Ends {
    match view {
        View::ContainerOut => Ends {
            smac: if rng.chance(95) { C1_MAC } else { rng.pick(&[C2_MAC, GATEWAY_MAC, random_mac(rng)]) },
            dmac: if rng.chance(80) { GATEWAY_MAC } else { rng.pick(&[C2_MAC, BROADCAST, random_mac(rng)]) },
            src: if rng.chance(92) { C1 } else { remote(rng) },
            dst: remote(rng),
        },
        View::ContainerIn => Ends {
            smac: rng.pick(&[GATEWAY_MAC, C2_MAC]),
            dmac: C1_MAC,
            src: remote(rng),
            dst: if rng.chance(92) { C1 } else { remote(rng) },
        },
        View::FromOutside => Ends {
            smac: CLIENT_MAC,
            dmac: HOST_MAC,
            src: remote(rng),
            dst: match rng.below(10) {
                0..=6 => HOST,
                7 | 8 => subnet_addr(rng),
                _ => remote(rng),
            },
        },
        View::ToOutside => Ends {
            smac: HOST_MAC,
            dmac: NEXT_HOP_MAC,
            src: match rng.below(10) {
                0..=7 => subnet_addr(rng),
                8 => HOST,
                _ => remote(rng),
            },
            dst: remote(rng),
        },
    }
}

/// Ports the maps and rules care about, and random ones.
fn port(rng: &Rng) -> u16 {
    match rng.below(16) {
        0 => 0,
        1 => 22,
        2 => 53,
        3 => 80,
        4 => 443,
        5 => 5000 + rng.below(200) as u16,
        6 | 7 => 8080,
        8 => 8053,
        9 => 20000 + rng.below(1000) as u16,
        10 => 40000,
        11 => 65535,
        _ => rng.u16(),
    }
}

fn tcp_flags(rng: &Rng) -> u8 {
    rng.pick(&[0x02, 0x02, 0x12, 0x10, 0x04, 0x14, 0x11, 0x18, 0x00, 0x06, 0x03, 0x01, 0x29, rng.u8()])
}

fn payload(rng: &Rng) -> Vec<u8> {
    let n = rng.pick(&[0, 1, 4, 8, 16, 32, 64, 200]);
    rng.bytes(n)
}

/// An ICMP message of any type with a correct checksum.
pub fn icmp_msg(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = frames::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An L4 segment of `proto` between the ends, with a correct checksum.
fn segment(rng: &Rng, proto: u8, e: &Ends) -> Vec<u8> {
    match proto {
        IPPROTO_TCP => frames::tcp(e.src, e.dst, port(rng), port(rng), tcp_flags(rng), &payload(rng)),
        IPPROTO_UDP => frames::udp(e.src, e.dst, port(rng), port(rng), &payload(rng)),
        IPPROTO_ICMP => {
            let id = rng.pick(&[0x77, 20000 + rng.below(1000) as u16, rng.u16()]);
            let kind = rng.pick(&[8, 8, 0]);
            let [a, b] = id.to_be_bytes();
            icmp_msg(kind, 0, [a, b, 0, 1], &payload(rng))
        }
        _ => payload(rng),
    }
}

pub fn ip_frame(e: &Ends, proto: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
    frames::eth(e.dmac, e.smac, ETH_P_IPV4, &frames::ipv4(e.src, e.dst, proto, options, l4))
}

/// Recomputes the IPv4 header checksum over the header length the IHL
/// claims (20 bytes if it claims less, or if the frame holds less).
pub fn fix_ip_checksum(f: &mut [u8]) {
    if f.len() < L3 + 20 {
        return;
    }
    let claimed = (f[L3] & 0x0f) as usize * 4;
    let ihl = if claimed >= 20 && f.len() >= L3 + claimed { claimed } else { 20 };
    f[L3 + 10] = 0;
    f[L3 + 11] = 0;
    let c = frames::checksum(&f[L3..L3 + ihl]);
    f[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Sets the IP identification and the flags/offset field (flags in the top
/// three bits), fixing the header checksum.
fn set_frag(f: &mut [u8], id: u16, field: u16) {
    f[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
    f[L3 + 6..L3 + 8].copy_from_slice(&field.to_be_bytes());
    fix_ip_checksum(f);
}

fn set_total_len(f: &mut [u8], total: usize) {
    f[L3 + 2..L3 + 4].copy_from_slice(&(total as u16).to_be_bytes());
    fix_ip_checksum(f);
}

/// IP options of `len` bytes (a multiple of 4): padding, well-formed
/// options, or noise.
fn options(rng: &Rng, len: usize) -> Vec<u8> {
    let mut o = match rng.below(4) {
        0 => vec![1; len],
        1 => vec![0; len],
        2 if len >= 4 => {
            let mut o = vec![0x94, 4, 0, 0];
            o.resize(len, 1);
            o
        }
        _ => rng.bytes(len),
    };
    o.truncate(len);
    o
}

fn proto_of(rng: &Rng) -> u8 {
    rng.pick(&[IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_GRE])
}

/// A well-formed IPv4 frame for the view, with correct checksums.
fn valid(rng: &Rng, view: View, proto: u8) -> Vec<u8> {
    let e = ends(rng, view);
    let opts = if rng.chance(10) { options(rng, 4 * rng.below(11)) } else { vec![] };
    ip_frame(&e, proto, &opts, &segment(rng, proto, &e))
}

/// A packet (IP header on) carrying `key`'s tuple, with these TCP flags.
pub fn packet_with(key: &CtKey4, flags: u8, body: &[u8]) -> Vec<u8> {
    let (sport, dport) = (u16::from_be(key.sport), u16::from_be(key.dport));
    let l4 = match key.proto {
        IPPROTO_TCP => frames::tcp(key.saddr, key.daddr, sport, dport, flags, body),
        IPPROTO_UDP => frames::udp(key.saddr, key.daddr, sport, dport, body),
        IPPROTO_ICMP => {
            let [a, b] = sport.to_be_bytes();
            icmp_msg(key.icmp_type, 0, [a, b, 0, 1], body)
        }
        _ => body.to_vec(),
    };
    frames::ipv4(key.saddr, key.daddr, key.proto, &[], &l4)
}

fn packet_of(rng: &Rng, key: &CtKey4) -> Vec<u8> {
    let flags = tcp_flags(rng);
    packet_with(key, flags, &payload(rng))
}

/// A frame of a tracked flow (either way), or a fresh valid one.
fn tracked(rng: &Rng, view: View, pools: &Pools) -> Vec<u8> {
    let Some(key) = pools.pick(rng, |k| view.fits(k)) else { return valid(rng, view, proto_of(rng)) };
    let e = ends(rng, view);
    frames::eth(e.dmac, e.smac, ETH_P_IPV4, &packet_of(rng, &key))
}

/// A valid frame, of a tracked flow one time in three: what the other
/// cases bend.
fn base(rng: &Rng, view: View, pools: &Pools) -> Vec<u8> {
    if rng.chance(30) {
        tracked(rng, view, pools)
    } else {
        valid(rng, view, proto_of(rng))
    }
}

/// An ICMP error (`kind`, `code`) quoting a tracked packet that fits the
/// view (or a random one), cut to a random length.
fn icmp_error(rng: &Rng, view: View, pools: &Pools, kind: u8, code: u8) -> Vec<u8> {
    let mut e = ends(rng, view);
    let quoted_key = pools.pick(rng, |k| view.fits_quoted(k)).filter(|_| rng.chance(75));
    let mut quoted = match quoted_key {
        Some(k) => {
            // The error goes back to the quoted packet's source.
            match view {
                View::ContainerOut => e.dst = if rng.chance(70) { k.saddr } else { remote(rng) },
                View::ContainerIn => e.src = if rng.chance(50) { k.daddr } else { remote(rng) },
                View::FromOutside => e.dst = k.saddr,
                View::ToOutside => (e.src, e.dst) = (k.daddr, k.saddr),
            }
            packet_of(rng, &k)
        }
        None => {
            let q = ends(rng, rng.pick(&[View::ContainerOut, View::ContainerIn, View::ToOutside, View::FromOutside]));
            let proto = rng.pick(&[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_GRE, rng.u8()]);
            frames::ipv4(q.src, q.dst, proto, &[], &segment(rng, proto, &q))
        }
    };
    match rng.below(10) {
        0 => quoted[0] = 0x40 | rng.below(16) as u8,
        1 => quoted[0] = rng.u8(),
        2 => quoted[9] = rng.u8(),
        _ => {}
    }
    let quote = rng.pick(&[0, 4, 8, 19, 20, 24, 27, 28, 36, 48, quoted.len()]).min(quoted.len());
    let mtu = rng.pick(&[0, 576, 1280, 1500, rng.u16()]);
    ip_frame(&e, IPPROTO_ICMP, &[], &frames::icmp_error(kind, code, mtu, &quoted[..quote]))
}

fn icmp_any(rng: &Rng, view: View, pools: &Pools, kind: u8) -> Vec<u8> {
    if matches!(kind, 3 | 11 | 12) && rng.chance(80) {
        return icmp_error(rng, view, pools, kind, rng.below(16) as u8);
    }
    let e = ends(rng, view);
    let rest = rng.bytes(4);
    let body = payload(rng);
    ip_frame(
        &e,
        IPPROTO_ICMP,
        &[],
        &icmp_msg(kind, rng.pick(&[0, rng.u8()]), [rest[0], rest[1], rest[2], rest[3]], &body),
    )
}

/// Offset of the L4 checksum of a frame's protocol, if it has one.
fn l4_checksum_at(f: &[u8]) -> Option<usize> {
    let ihl = (f.get(L3)? & 0x0f) as usize * 4;
    let at = L3
        + ihl
        + match *f.get(L3 + 9)? {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            IPPROTO_ICMP => 2,
            _ => return None,
        };
    (at + 2 <= f.len()).then_some(at)
}

fn arp(rng: &Rng, view: View) -> Vec<u8> {
    let e = ends(rng, view);
    let sha = if rng.chance(70) { e.smac } else { rng.pick(&[C2_MAC, GATEWAY_MAC, random_mac(rng)]) };
    let spa = if rng.chance(60) { e.src } else { rng.pick(&[[0; 4], C2, GATEWAY, HOST, rng.u32().to_be_bytes()]) };
    let op = rng.pick(&[1, 2, 1, rng.u16()]);
    let mut a = frames::arp(op, sha, spa, [0; 6], remote(rng));
    match rng.below(8) {
        0 => a[rng.below(6)] = rng.u8(), // htype, ptype, hlen, plen
        1 => a.truncate(rng.below(a.len())),
        2 => a.extend(rng.bytes(18)), // Ethernet padding
        _ => {}
    }
    frames::eth(if rng.chance(60) { BROADCAST } else { e.dmac }, e.smac, ETH_P_ARP, &a)
}

fn other_ethertype(rng: &Rng, view: View, pools: &Pools) -> Vec<u8> {
    let inner = base(rng, view, pools);
    let (macs, ip) = inner.split_at(12);
    let mut f = macs.to_vec();
    match rng.below(6) {
        // 802.1Q and 802.1ad tags in front of the IPv4 packet.
        0 => f.extend_from_slice(&[0x81, 0x00, 0x00, rng.u8()]),
        1 => f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x05, 0x81, 0x00, 0x00, 0x07]),
        2 => {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend(rng.bytes(40 + rng.below(40)));
            return f;
        }
        3 => f.extend_from_slice(&[0x88, 0x47]), // MPLS
        4 => f.extend_from_slice(&(rng.below(0x600) as u16).to_be_bytes()), // 802.3 length
        _ => f.extend_from_slice(&rng.u16().to_be_bytes()),
    }
    f.extend_from_slice(ip);
    f
}

/// A fragment of a valid packet: every combination of DF, MF, offset and
/// the reserved bit comes up.
fn fragment(rng: &Rng, view: View, pools: &Pools) -> Vec<u8> {
    let mut f = base(rng, view, pools);
    let offset = rng.pick(&[0, 0, 1, 2, 3, 8, 185, 8191, rng.below(8192) as u16]);
    let flags = rng.pick(&[0x2000, 0x2000, 0, 0x4000, 0x6000, 0x8000, 0xa000]);
    if offset != 0 && rng.chance(50) {
        let start = L3 + 20.min(f.len() - L3);
        for b in &mut f[start..] {
            *b = 0xab;
        }
    }
    set_frag(&mut f, rng.u16(), flags | offset);
    f
}

/// A first fragment, then later ones of the same datagram (and sometimes
/// one of another datagram, or from another source).
fn fragment_train(rng: &Rng, view: View, pools: &Pools) -> Vec<Vec<u8>> {
    let id = rng.u16();
    let mut first = base(rng, view, pools);
    if first.len() < L3 + 20 {
        return vec![first];
    }
    set_frag(&mut first, id, 0x2000);
    let mut train = vec![first.clone()];
    let ihl = (first[L3] & 0x0f) as usize * 4;
    for i in 0..1 + rng.below(3) {
        let mut later = first[..(L3 + ihl).min(first.len())].to_vec();
        later.extend(rng.bytes(8 * (1 + rng.below(4))));
        let total = later.len() - L3;
        later[L3 + 2..L3 + 4].copy_from_slice(&(total as u16).to_be_bytes());
        let offset = rng.pick(&[1, 2, 3, 4 + i as u16, 185]);
        let more = if rng.chance(50) { 0x2000 } else { 0 };
        let other_id = if rng.chance(15) { id ^ 1 } else { id };
        if rng.chance(10) {
            later[L3 + 12..L3 + 16].copy_from_slice(&remote(rng));
        }
        set_frag(&mut later, other_id, more | offset);
        train.push(later);
    }
    train
}

pub fn random(rng: &Rng, view: View, pools: &Pools) -> Case {
    match rng.below(100) {
        0..=13 => Case::one("valid", valid(rng, view, proto_of(rng))),
        14..=25 => Case::one("tracked", tracked(rng, view, pools)),
        26..=32 => {
            let kind = rng.u8();
            Case::one("icmp-type", icmp_any(rng, view, pools, kind))
        }
        33..=42 => {
            let (kind, code) = (rng.pick(&[3, 3, 11, 11, 12, 4, 5]), rng.pick(&[0, 1, 3, 4, rng.below(16) as u8]));
            Case::one("icmp-error", icmp_error(rng, view, pools, kind, code))
        }
        43..=47 => {
            let e = ends(rng, view);
            let proto = proto_of(rng);
            let opts = options(rng, 4 * rng.below(11));
            Case::one("ip-options", ip_frame(&e, proto, &opts, &segment(rng, proto, &e)))
        }
        48..=51 => {
            let mut f = base(rng, view, pools);
            f[L3] = 0x40 | rng.below(16) as u8;
            if rng.chance(70) {
                fix_ip_checksum(&mut f);
            }
            Case::one("ihl", f)
        }
        52..=58 => Case::one("fragment", fragment(rng, view, pools)),
        59..=63 => Case { kind: "fragment-train", frames: fragment_train(rng, view, pools) },
        64..=67 => {
            let e = ends(rng, view);
            let proto = rng.pick(&[0, 2, 4, 41, 47, 50, 51, 58, 89, 103, 132, 136, 253, 254, 255, rng.u8()]);
            Case::one("protocol", ip_frame(&e, proto, &[], &payload(rng)))
        }
        68..=73 => {
            let mut f = base(rng, view, pools);
            let at = match rng.below(3) {
                0 => Some(L3 + 10),
                _ => l4_checksum_at(&f),
            };
            if let Some(at) = at {
                let v = rng.pick(&[0, 0xffff, rng.u16()]);
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            Case::one("checksum", f)
        }
        74..=77 => Case::one("ethertype", other_ethertype(rng, view, pools)),
        78..=81 => Case::one("arp", arp(rng, view)),
        82..=87 => {
            let mut f = base(rng, view, pools);
            let cut = L3 + rng.below(f.len() - L3 + 1);
            f.truncate(cut);
            if cut >= L3 + 20 && rng.chance(50) {
                set_total_len(&mut f, cut - L3);
            }
            Case::one("truncated", f)
        }
        88..=92 => {
            // Headers past the IP total length: the frame holds them, the
            // datagram does not (a receiver trims the rest as padding).
            let mut f = base(rng, view, pools);
            let ihl = (f[L3] & 0x0f) as usize * 4;
            set_total_len(&mut f, ihl + rng.below(20));
            if rng.chance(30) {
                let id = rng.u16();
                set_frag(&mut f, id, 0x2000);
            }
            Case::one("padded", f)
        }
        _ => {
            let mut f = base(rng, view, pools);
            for _ in 0..1 + rng.below(4) {
                let at = if rng.chance(70) { rng.below(f.len().min(L3 + 48)) } else { rng.below(f.len()) };
                f[at] = rng.u8();
            }
            if rng.chance(50) {
                fix_ip_checksum(&mut f);
            }
            Case::one("mutated", f)
        }
    }
}

/// The systematic part: every truncation of a few base frames, every
/// option length, IHL value, fragment flag and offset combination, ICMP
/// type, IP protocol, and a list of ethertypes.
pub fn sweep(rng: &Rng, view: View, pools: &Pools) -> Vec<Case> {
    let mut cases = vec![];
    let e = ends(rng, view);
    let e = Ends { smac: default_smac(view), src: default_src(view), dst: default_dst(view), ..e };
    let tcp = ip_frame(&e, IPPROTO_TCP, &[], &frames::tcp(e.src, e.dst, 40000, 443, 0x02, b"12345678"));
    let udp = ip_frame(&e, IPPROTO_UDP, &[], &frames::udp(e.src, e.dst, 5000, 53, b"query"));
    let echo = ip_frame(&e, IPPROTO_ICMP, &[], &icmp_msg(8, 0, [0, 0x77, 0, 1], b"ping"));
    let error = icmp_error(rng, view, pools, 3, 3);
    let gre = ip_frame(&e, IPPROTO_GRE, &[1, 1, 1, 1, 0x94, 4, 0, 0], &[0, 0, 0x08, 0, 1, 2, 3, 4]);
    let arp = frames::eth(BROADCAST, e.smac, ETH_P_ARP, &frames::arp(1, e.smac, e.src, [0; 6], e.dst));
    for base in [&tcp, &udp, &echo, &error, &gre, &arp] {
        for cut in L3..=base.len() {
            let mut f = base[..cut].to_vec();
            cases.push(Case::one("sweep-truncate", f.clone()));
            if cut >= L3 + 20 && base != &arp {
                set_total_len(&mut f, cut - L3);
                cases.push(Case::one("sweep-truncate", f));
            }
        }
    }
    for len in (0..=40).step_by(4) {
        for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_GRE] {
            let seg = match proto {
                IPPROTO_TCP => frames::tcp(e.src, e.dst, 40001, 443, 0x02, b""),
                IPPROTO_UDP => frames::udp(e.src, e.dst, 5001, 53, b""),
                IPPROTO_ICMP => icmp_msg(8, 0, [0, 0x78, 0, 1], b""),
                _ => vec![0, 0, 0x08, 0],
            };
            cases.push(Case::one("sweep-options", ip_frame(&e, proto, &vec![1; len], &seg)));
            cases.push(Case::one("sweep-options", ip_frame(&e, proto, &options(rng, len), &seg)));
        }
    }
    // Option length bytes 0-40 in a 40-byte option area.
    for kind in [7u8, 0x44, 0x83] {
        for len in 0..=40u8 {
            let mut o = vec![kind, len, 4];
            o.resize(40, 0);
            cases.push(Case::one("sweep-option-length", ip_frame(&e, IPPROTO_TCP, &o, &tcp[L3 + 20..])));
        }
    }
    for ihl in 0..16u8 {
        for base in [&tcp, &udp, &echo, &gre] {
            let mut f = base.clone();
            f[L3] = 0x40 | ihl;
            cases.push(Case::one("sweep-ihl", f.clone()));
            fix_ip_checksum(&mut f);
            cases.push(Case::one("sweep-ihl", f));
        }
    }
    let offsets = [0u16, 1, 2, 3, 4, 8, 16, 185, 1000, 8191];
    for (i, base) in [&tcp, &udp, &echo, &gre].into_iter().enumerate() {
        for offset in offsets {
            for flags in [0u16, 0x2000, 0x4000, 0x6000] {
                let mut f = base.clone();
                set_frag(&mut f, 0x4000 + i as u16, flags | offset);
                cases.push(Case::one("sweep-fragment", f));
            }
            if offset != 0 {
                let id = (0x5000 + offset) ^ ((i as u16) << 12);
                let mut first = base.clone();
                set_frag(&mut first, id, 0x2000);
                let mut later = base[..L3 + 20].to_vec();
                later.extend_from_slice(&[0xab; 16]);
                later[L3 + 2..L3 + 4].copy_from_slice(&36u16.to_be_bytes());
                set_frag(&mut later, id, offset);
                cases.push(Case { kind: "sweep-fragment-train", frames: vec![first, later] });
            }
        }
    }
    for kind in 0..=255u8 {
        cases.push(Case::one(
            "sweep-icmp-type",
            ip_frame(&e, IPPROTO_ICMP, &[], &icmp_msg(kind, 0, [0, 0x79, 0, 1], b"abcd")),
        ));
        cases.push(Case::one("sweep-icmp-type", icmp_any(rng, view, pools, kind)));
    }
    for kind in [3u8, 11, 12] {
        for code in 0..16u8 {
            cases.push(Case::one("sweep-icmp-error", icmp_error(rng, view, pools, kind, code)));
        }
    }
    for proto in 0..=255u8 {
        cases.push(Case::one("sweep-protocol", ip_frame(&e, proto, &[], b"protocol-payload")));
    }
    for ethertype in [0x0000u16, 0x05dc, 0x0600, 0x0806, 0x0842, 0x8100, 0x86dd, 0x8847, 0x88a8, 0x88cc, 0x9100, 0xffff]
    {
        let mut f = tcp.clone();
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        cases.push(Case::one("sweep-ethertype", f));
    }
    cases
}

fn default_src(view: View) -> [u8; 4] {
    match view {
        View::ContainerOut | View::ToOutside => C1,
        View::ContainerIn | View::FromOutside => CLIENT,
    }
}

fn default_dst(view: View) -> [u8; 4] {
    match view {
        View::ContainerOut | View::ToOutside => SERVER,
        View::ContainerIn => C1,
        View::FromOutside => HOST,
    }
}

fn default_smac(view: View) -> [u8; 6] {
    match view {
        View::ContainerOut => C1_MAC,
        View::ContainerIn => GATEWAY_MAC,
        View::FromOutside => CLIENT_MAC,
        View::ToOutside => HOST_MAC,
    }
}
