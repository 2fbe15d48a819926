//! Events for the agent's monitor, through the `EVENTS` ring buffer. A full
//! buffer loses the event, never the packet. Records are written in place
//! in the ring buffer (reserve, fill, submit): an IPv6 record is 64 bytes
//! the callers' stacks do not have.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::ring_buf::RingBufEntry};
use netpath_common::{
    event::{EVENT_FAMILY_IPV4, EVENT_FAMILY_IPV6},
    CtKey, CtKey6, Event, HookId, In6Addr,
};
use network_types::eth::EthHdr;

use crate::{
    clock,
    family::Family,
    maps::{EVENTS, EVENT_BUDGET},
    packet::{ptr_at, Packet},
};

/// May a drop event go to the monitor now? At most
/// `MAX_DROP_EVENTS_PER_SEC` per CPU: a flood is counted, not streamed
/// packet by packet (netpath_common::EventBudget).
#[inline(always)]
pub fn drop_event_admitted() -> bool {
    match EVENT_BUDGET.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        Some(budget) => unsafe { (*budget).admit(clock::now_ns()) },
        None => true,
    }
}

/// Who saw the packet, as every event says.
#[derive(Clone, Copy)]
pub struct Origin {
    pub kind: u8,
    pub reason: u8,
    pub hook: HookId,
    pub ifindex: u32,
    pub container_id: u32,
}

/// A record for a `K` tuple in the ring buffer, its header filled in; the
/// caller writes the key (zeroed here) and submits it.
#[inline(always)]
fn reserve<K: Copy + crate::zero::Zeroable + 'static>(
    origin: Origin,
    family: u8,
) -> Option<(RingBufEntry<Event<K>>, *mut Event<K>)> {
    let mut entry = EVENTS.reserve_untyped::<Event<K>>(0)?;
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved record, ours until submitted; written field by
    // field (no copy of a whole record through the stack).
    unsafe {
        (*e).timestamp_ns = bpf_ktime_get_ns();
        (*e).kind = origin.kind;
        (*e).reason = origin.reason;
        (*e).hook = origin.hook as u8;
        (*e).family = family;
        (*e).ifindex = origin.ifindex;
        (*e).container_id = origin.container_id;
        crate::zero::zero(&raw mut (*e).key);
        (*e)._pad = 0;
    }
    Some((entry, e))
}

/// An event about a tuple of family `A` (`reversed`: the other way round,
/// written so without a reversed copy on the stack).
#[inline(always)]
pub fn emit<A: Family>(origin: Origin, key: &CtKey<A>, reversed: bool) {
    let family = if A::BITS == 128 { EVENT_FAMILY_IPV6 } else { EVENT_FAMILY_IPV4 };
    let Some((entry, e)) = reserve::<CtKey<A>>(origin, family) else { return };
    // SAFETY: the reserved record (see `reserve`).
    let k = unsafe { &mut (*e).key };
    if reversed {
        (k.saddr, k.daddr, k.sport, k.dport) = (key.daddr, key.saddr, key.dport, key.sport);
    } else {
        (k.saddr, k.daddr, k.sport, k.dport) = (key.saddr, key.daddr, key.sport, key.dport);
    }
    (k.proto, k.icmp_type) = (key.proto, key.icmp_type);
    entry.submit(0);
}

/// A drop event for an IPv6 frame, its tuple read from the fixed header
/// and, when the upper layer follows it directly, the ports (TCP, UDP) or
/// the echo id (ICMPv6): what the monitor shows, without the extension
/// header walk a full parse needs stack for.
#[inline(always)]
pub fn emit_drop6(pkt: &impl Packet, origin: Origin) {
    use netpath_common::{
        conntrack::{IPPROTO_TCP, IPPROTO_UDP},
        family::IPPROTO_ICMPV6,
    };
    const IP6: usize = EthHdr::LEN;
    const L4: usize = IP6 + 40;
    let Some((entry, e)) = reserve::<CtKey6>(origin, EVENT_FAMILY_IPV6) else { return };
    // SAFETY: the reserved record (see `reserve`); packet reads are
    // bounds-checked by `ptr_at`.
    unsafe {
        if let (Some(next), Some(src), Some(dst)) =
            (ptr_at::<u8>(pkt, IP6 + 6), ptr_at::<[u8; 16]>(pkt, IP6 + 8), ptr_at::<[u8; 16]>(pkt, IP6 + 24))
        {
            let k = &mut (*e).key;
            k.proto = *next;
            (k.saddr, k.daddr) = (In6Addr::from_octets(*src), In6Addr::from_octets(*dst));
            match k.proto {
                IPPROTO_TCP | IPPROTO_UDP => {
                    if let Some(ports) = ptr_at::<[u16; 2]>(pkt, L4) {
                        let ports = core::ptr::read_unaligned(ports);
                        (k.sport, k.dport) = (ports[0], ports[1]);
                    }
                }
                IPPROTO_ICMPV6 => {
                    if let Some(head) = ptr_at::<[u16; 3]>(pkt, L4) {
                        let head = core::ptr::read_unaligned(head);
                        let icmp_type = head[0].to_ne_bytes()[0];
                        // Echo request and reply: the identifier.
                        if icmp_type == 128 || icmp_type == 129 {
                            (k.icmp_type, k.sport) = (icmp_type, head[2]);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    entry.submit(0);
}
