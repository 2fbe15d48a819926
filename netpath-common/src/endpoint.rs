//! A container endpoint as the datapath sees it.

/// The endpoint has an IPv4 address in [`Endpoint::ipv4`].
pub const ENDPOINT_F_IPV4: u16 = 1 << 0;
/// The endpoint has an IPv6 address in [`Endpoint::ipv6`] (reserved: IPv6
/// comes later, the layout is ready for it).
pub const ENDPOINT_F_IPV6: u16 = 1 << 1;
/// New flows to the endpoint that no rule matches are denied.
pub const ENDPOINT_F_DEFAULT_DENY_IN: u16 = 1 << 2;
/// New flows from the endpoint that no rule matches are denied.
pub const ENDPOINT_F_DEFAULT_DENY_OUT: u16 = 1 << 3;

/// One container interface, keyed in the `ENDPOINTS` map by the ifindex of
/// the host side of its veth pair (the interface the per-container programs
/// are attached to). Addresses are stored in network byte order, as they
/// appear on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    /// MAC address of the container's `eth0`.
    pub mac: [u8; 6],
    /// `ENDPOINT_F_*` bits.
    pub flags: u16,
    /// ifindex of the host-side veth (the map key, repeated for dumps).
    pub ifindex: u32,
    /// The agent's id for the container (stable across agent restarts).
    pub id: u32,
}

impl Endpoint {
    #[inline(always)]
    pub fn has_ipv4(&self) -> bool {
        self.flags & ENDPOINT_F_IPV4 != 0
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}
