//! Published ports: what the datapath looks up when a new flow arrives.

use crate::family::In6Addr;

/// Key of the `MAPPINGS4`/`MAPPINGS6` maps: a host address (all zero: any
/// host address of the family), a port and a protocol, as on the wire
/// (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MappingKey<A> {
    pub addr: A,
    /// Network byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}

pub type MappingKey4 = MappingKey<[u8; 4]>;
pub type MappingKey6 = MappingKey<In6Addr>;

/// Where a published port leads: the container's address of the key's
/// family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingEntry<A> {
    pub container_addr: A,
    /// Network byte order.
    pub container_port: u16,
    pub _pad: u16,
    /// The agent's id of the mapping (one id for both families' entries);
    /// tracked flows carry it so that they can be flushed when the mapping
    /// changes.
    pub id: u32,
    /// Host-side veth of the backend container.
    pub container_ifindex: u32,
}

pub type MappingEntry4 = MappingEntry<[u8; 4]>;
pub type MappingEntry6 = MappingEntry<In6Addr>;

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

/// [`SockRevNatKey4`] for IPv6 sockets (`SOCK_REVNAT6`); explicit padding
/// to its 8-byte alignment (a hash key has no bytes left unset).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatKey6 {
    pub cookie: u64,
    pub container_addr: In6Addr,
    pub container_port: u16,
    pub _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatEntry6 {
    pub host_addr: In6Addr,
    pub host_port: u16,
    pub _pad: u16,
    pub mapping_id: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for MappingKey4 {}
    unsafe impl aya::Pod for MappingEntry4 {}
    unsafe impl aya::Pod for MappingKey6 {}
    unsafe impl aya::Pod for MappingEntry6 {}
    unsafe impl aya::Pod for HostAddr {}
    unsafe impl aya::Pod for SockRevNatKey4 {}
    unsafe impl aya::Pod for SockRevNatEntry4 {}
    unsafe impl aya::Pod for SockRevNatKey6 {}
    unsafe impl aya::Pod for SockRevNatEntry6 {}
}
