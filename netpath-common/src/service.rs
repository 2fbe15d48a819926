//! Published ports: what the datapath looks up when a new flow arrives.

/// Key of the `SERVICES` map: a host address (all zero: any host address),
/// a port and a protocol, as on the wire (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
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
pub struct ServiceValue {
    pub backend_addr: [u8; 4],
    /// Network byte order.
    pub backend_port: u16,
    pub _pad: u16,
    /// The agent's id of the mapping; tracked flows carry it so that they
    /// can be flushed when the mapping changes.
    pub id: u32,
    /// Host-side veth of the backend container.
    pub backend_ifindex: u32,
}

/// Value of the `HOST_ADDRS` map: which addresses are the host's own (a
/// wildcard mapping answers on these only). Keyed by the address bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostAddr {
    pub ifindex: u32,
}

/// Key of `SOCK_REVNAT`: lets recvmsg4/getpeername4 show a host socket the
/// published address it connected to rather than the container behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub backend_addr: [u8; 4],
    pub backend_port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValue {
    pub service_addr: [u8; 4],
    pub service_port: u16,
    pub _pad: u16,
    pub service_id: u32,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for HostAddr {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNatValue {}
}
