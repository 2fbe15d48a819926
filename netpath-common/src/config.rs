//! The datapath's per-instance settings: one entry in the `CONFIG` array.

use crate::{conntrack::CtTimeouts, family::In6Addr};

/// Packets from the uplink may reach container addresses directly (routed
/// mode). Off by default: only published ports are reachable from outside.
pub const CFG_F_ROUTED: u32 = 1 << 0;
/// Container traffic leaving through the uplink gets the uplink address.
pub const CFG_F_MASQUERADE: u32 = 1 << 1;
/// Direct container-to-container traffic is denied (Docker's --icc=false);
/// published ports still work.
pub const CFG_F_NO_ICC: u32 = 1 << 2;
/// Emit an event for every new flow (a monitor asked for them).
pub const CFG_F_TRACE_FLOWS: u32 = 1 << 3;
/// The XDP program is attached to the uplink (counting and dropping direct
/// access happen there; otherwise the tc ingress program does both).
pub const CFG_F_UPLINK_XDP: u32 = 1 << 4;
/// Judged and translated packets are redirected straight to the interface
/// they leave by (see `crate::forward`), rather than handed to the stack.
pub const CFG_F_FAST_PATH: u32 = 1 << 5;
/// `GUARDED_PORTS` holds ports: TCP/UDP to a host address on one of them
/// that no mapping publishes is dropped on the uplink (see
/// `crate::uplink_guard`). Off: the bitmap is not read.
pub const CFG_F_GUARDED_PORTS: u32 = 1 << 6;
/// `DENIED_SOURCES4` holds prefixes: everything from them is dropped on the
/// uplink. Off: the trie is not read.
pub const CFG_F_DENIED_SOURCES: u32 = 1 << 7;
/// `ROUTE_MTUS4` holds routes: a container's IPv4 packet leaving the host
/// is checked against its route's own MTU there. Off: the trie is not read.
pub const CFG_F_ROUTE_MTUS4: u32 = 1 << 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Netns cookie of the agent's namespace: the socket hooks act only on
    /// sockets there. 0 disables them.
    pub netns_cookie: u64,
    /// Container subnet and prefix length.
    pub subnet4: [u8; 4],
    pub subnet4_prefix: u32,
    /// The bridge's address (source for same-container hairpin).
    pub gateway4: [u8; 4],
    /// `CFG_F_*`.
    pub flags: u32,
    pub timeouts: CtTimeouts,
    /// Source address for masqueraded traffic (the uplink's).
    pub masq_addr4: [u8; 4],
    /// Source ports (host byte order, inclusive) the masquerade allocates
    /// from; also the range of translated ICMP echo identifiers.
    pub masq_port_min: u16,
    pub masq_port_max: u16,
    /// The bridge's MAC (the agent sets it, so it never follows the ports):
    /// with icc off the only unicast destination a container may address.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The IPv6 container subnet and prefix length (0: the instance has no
    /// IPv6, and containers' IPv6 frames are dropped).
    pub subnet6: In6Addr,
    pub subnet6_prefix: u32,
    pub _pad6: u32,
    /// The bridge's IPv6 address.
    pub gateway6: In6Addr,
    /// The source IPv6 flows containers start get leaving the uplink (the
    /// uplink's first global address; unspecified: none, such flows are
    /// dropped rather than leaving with a container's source).
    pub masq_addr6: In6Addr,
}

impl DatapathConfig {
    #[inline(always)]
    pub fn subnet4_mask(&self) -> u32 {
        if self.subnet4_prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.subnet4_prefix.min(32))
        }
    }

    /// Is `addr` inside the container subnet?
    #[inline(always)]
    pub fn in_subnet4(&self, addr: [u8; 4]) -> bool {
        let mask = self.subnet4_mask();
        mask != 0 && u32::from_be_bytes(addr) & mask == u32::from_be_bytes(self.subnet4) & mask
    }

    /// Is `addr` inside the IPv6 container subnet (if there is one)?
    #[inline(always)]
    pub fn in_subnet6(&self, addr: In6Addr) -> bool {
        self.subnet6_prefix != 0 && addr.in_prefix(&self.subnet6, self.subnet6_prefix)
    }

    /// [`Self::icc_denies4`] for IPv6.
    #[inline(always)]
    pub fn icc_denies6(&self, remote: In6Addr) -> bool {
        self.has(CFG_F_NO_ICC) && self.in_subnet6(remote) && remote != self.gateway6
    }

    #[inline(always)]
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// With icc off (Docker's --icc=false), may a container not start a
    /// flow to `remote`? Other containers' addresses are off limits; the
    /// gateway (and so published ports through host addresses) is not.
    /// Kernel and agent both decide through here.
    #[inline(always)]
    pub fn icc_denies4(&self, remote: [u8; 4]) -> bool {
        self.has(CFG_F_NO_ICC) && self.in_subnet4(remote) && remote != self.gateway4
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for DatapathConfig {}
