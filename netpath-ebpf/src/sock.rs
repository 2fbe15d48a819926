//! Published ports for the host's own processes, at the socket layer:
//! connect/sendmsg to a published address are sent to the container instead,
//! and recvmsg/getpeername show the published address again. Only sockets
//! in the agent's network namespace are touched (netns cookie filter): the
//! programs hang on a cgroup that other namespaces share.

use core::ptr;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
    EbpfContext as _,
};
use netpath_common::{
    conntrack::{IPPROTO_TCP, IPPROTO_UDP},
    In6Addr, SockRevNatEntry4, SockRevNatEntry6, SockRevNatKey4, SockRevNatKey6,
};

use crate::{
    mapping,
    maps::{config, mapping_live, SOCK_REVNAT4, SOCK_REVNAT6},
};

/// The port sits in the low 16 bits of `user_port`, in network order.
#[inline(always)]
fn port_of(user_port: u32) -> u16 {
    user_port as u16
}

#[inline(always)]
fn in_agent_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = config() else { return false };
    cfg.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.netns_cookie
}

/// connect4 and sendmsg4: point the socket at the container.
#[inline(always)]
pub fn forward4(ctx: &SockAddrContext) {
    if !in_agent_netns(ctx) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let addr = sa.user_ip4.to_ne_bytes();
    let port = port_of(sa.user_port);
    let Some(published) = mapping::lookup4(addr, port, proto, true) else { return };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey4 {
        cookie,
        container_addr: published.container_addr,
        container_port: published.container_port,
        _pad: 0,
    };
    let value = SockRevNatEntry4 { host_addr: addr, host_port: port, _pad: 0, mapping_id: published.id, _pad2: 0 };
    // Without the record replies would show the container's address; still
    // better to connect than to refuse, so a full map does not stop us.
    let _ = SOCK_REVNAT4.insert(&key, &value, 0);
    sa.user_ip4 = u32::from_ne_bytes(published.container_addr);
    sa.user_port = published.container_port as u32;
}

/// recvmsg4 and getpeername4: show the published address, not the container.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext) {
    if !in_agent_netns(ctx) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey4 {
        cookie,
        container_addr: sa.user_ip4.to_ne_bytes(),
        container_port: port_of(sa.user_port),
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    // A translation of a mapping that is gone no longer applies (the agent
    // does not walk this table on unmap).
    if let Some(v) = unsafe { SOCK_REVNAT4.get(&key) }.filter(|v| mapping_live(v.mapping_id)) {
        sa.user_ip4 = u32::from_ne_bytes(v.host_addr);
        sa.user_port = v.host_port as u32;
    }
}

/// connect6 and sendmsg6: [`forward4`] for IPv6 sockets (a published IPv6
/// address, `::1` included).
#[inline(always)]
pub fn forward6(ctx: &SockAddrContext) {
    if !in_agent_netns(ctx) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let addr = user_ip6(sa);
    let port = port_of(sa.user_port);
    let Some(published) = mapping::lookup6(&addr, port, proto, true) else { return };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = revnat_key6(cookie, published.container_addr, published.container_port);
    let value = SockRevNatEntry6 { host_addr: addr, host_port: port, _pad: 0, mapping_id: published.id };
    let _ = SOCK_REVNAT6.insert(&key, &value, 0);
    set_user_ip6(sa, &published.container_addr);
    sa.user_port = published.container_port as u32;
}

/// recvmsg6 and getpeername6: [`reverse4`] for IPv6 sockets.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) {
    if !in_agent_netns(ctx) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = revnat_key6(cookie, user_ip6(sa), port_of(sa.user_port));
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { SOCK_REVNAT6.get(&key) }.filter(|v| mapping_live(v.mapping_id)) {
        set_user_ip6(sa, &v.host_addr);
        sa.user_port = v.host_port as u32;
    }
}

/// The socket's IPv6 address: `user_ip6` holds it as four words in network
/// order (an `In6Addr` as it is), read one by one: the verifier refuses a
/// copy through a pointer into the context.
#[inline(always)]
fn user_ip6(sa: &bpf_sock_addr) -> In6Addr {
    // SAFETY: plain reads of the context's fields.
    unsafe {
        In6Addr([
            ptr::read_volatile(&sa.user_ip6[0]),
            ptr::read_volatile(&sa.user_ip6[1]),
            ptr::read_volatile(&sa.user_ip6[2]),
            ptr::read_volatile(&sa.user_ip6[3]),
        ])
    }
}

/// Writes the socket's IPv6 address, word by word (see [`user_ip6`]).
#[inline(always)]
fn set_user_ip6(sa: &mut bpf_sock_addr, addr: &In6Addr) {
    // SAFETY: plain writes of the context's fields.
    unsafe {
        ptr::write_volatile(&mut sa.user_ip6[0], addr.0[0]);
        ptr::write_volatile(&mut sa.user_ip6[1], addr.0[1]);
        ptr::write_volatile(&mut sa.user_ip6[2], addr.0[2]);
        ptr::write_volatile(&mut sa.user_ip6[3], addr.0[3]);
    }
}

/// The IPv6 reverse-translation key of a socket's flow to a container's
/// address and port, on a zeroed key (its zero padding as a literal would
/// be a call of the byte-wise memset, see crate::zero).
#[inline(always)]
fn revnat_key6(cookie: u64, container_addr: In6Addr, container_port: u16) -> SockRevNatKey6 {
    let mut key: SockRevNatKey6 = crate::zero::zeroed();
    (key.cookie, key.container_addr, key.container_port) = (cookie, container_addr, container_port);
    key
}
