//! Published ports: what the datapath looks up when a new flow arrives.

/// Key of the `MAPPINGS4` map: a host address (all zero: any host address),
/// a port and a protocol, as on the wire (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MappingKey4 {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}

/// Where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingEntry4 {
    pub container_addr: [u8; 4],
    /// Network byte order.
    pub container_port: u16,
    pub _pad: u16,
    /// The agent's id of the mapping; tracked flows carry it so that they
    /// can be flushed when the mapping changes.
    pub id: u32,
    /// Host-side veth of the backend container.
    pub container_ifindex: u32,
}

/// Value of the `HOST_ADDRS4` map: which addresses are the host's own (a
/// wildcard mapping answers on these only). Keyed by the address bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostAddr {
    pub ifindex: u32,
}

/// Key of `SOCK_REVNAT4`: lets recvmsg4/getpeername4 show a host socket the
/// published address it connected to rather than the container behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatKey4 {
    pub cookie: u64,
    pub container_addr: [u8; 4],
    pub container_port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatEntry4 {
    pub host_addr: [u8; 4],
    pub host_port: u16,
    pub _pad: u16,
    pub mapping_id: u32,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for MappingKey4 {}
    unsafe impl aya::Pod for MappingEntry4 {}
    unsafe impl aya::Pod for HostAddr {}
    unsafe impl aya::Pod for SockRevNatKey4 {}
    unsafe impl aya::Pod for SockRevNatEntry4 {}
}
