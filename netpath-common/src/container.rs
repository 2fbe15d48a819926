//! A container as the datapath sees it: its veth, addresses and policy
//! defaults.

use crate::{family::In6Addr, Direction};

/// The container has an IPv4 address in [`ContainerEntry::ipv4`].
pub const CONTAINER_F_IPV4: u16 = 1 << 0;
/// The container has an IPv6 address in [`ContainerEntry::ipv6`]: its IPv6
/// traffic is carried (without it, every IPv6 frame it sends is dropped).
pub const CONTAINER_F_IPV6: u16 = 1 << 1;
/// New flows to the container that no rule matches are denied.
pub const CONTAINER_F_DEFAULT_DENY_IN: u16 = 1 << 2;
/// New flows from the container that no rule matches are denied.
pub const CONTAINER_F_DEFAULT_DENY_OUT: u16 = 1 << 3;

/// One container interface, keyed in the `CONTAINERS` map by the ifindex of
/// the host side of its veth pair (the interface the per-container programs
/// are attached to). Addresses are stored in network byte order, as they
/// appear on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerEntry {
    pub ipv4: [u8; 4],
    pub ipv6: In6Addr,
    /// MAC address of the container's `eth0`.
    pub mac: [u8; 6],
    /// `CONTAINER_F_*` bits.
    pub flags: u16,
    /// ifindex of the host-side veth (the map key, repeated for dumps).
    pub ifindex: u32,
    /// The agent's id for the container (stable across agent restarts).
    pub id: u32,
    /// Moves on whenever the container's policy changes: a verdict given
    /// under another epoch is judged again on its next packet (kept if the
    /// rules still allow its flow, cut if not), so a rule change never walks
    /// conntrack.
    pub policy_epoch: u32,
    /// Its veth's slot in `IFACE_STATS` (see `stats::IFACE_SLOT_FIRST_CONTAINER`):
    /// the counters are found by index, never by a hash lookup per packet.
    pub stats_slot: u32,
}

impl ContainerEntry {
    #[inline(always)]
    pub fn has_ipv4(&self) -> bool {
        self.flags & CONTAINER_F_IPV4 != 0
    }

    #[inline(always)]
    pub fn has_ipv6(&self) -> bool {
        self.flags & CONTAINER_F_IPV6 != 0
    }

    /// Are new flows in `direction` that no rule matches denied?
    #[inline(always)]
    pub fn default_denies(&self, direction: Direction) -> bool {
        let bit = match direction {
            Direction::In => CONTAINER_F_DEFAULT_DENY_IN,
            Direction::Out => CONTAINER_F_DEFAULT_DENY_OUT,
        };
        self.flags & bit != 0
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ContainerEntry {}
