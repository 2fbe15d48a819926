//! How every program run ends: a pass is counted as traffic on the hook's
//! side of the interface, a drop is counted by reason and sent to the
//! monitor. Every entry point goes through [`finish`].

use netpath_common::{event::EVENT_DROP, ContainerEntry, DropReason, HookId};

use crate::{
    events, flow,
    packet::Packet,
    stats::{count_drop, count_packet, StatsSlot},
};

/// Where a run happened, for the counters and events.
#[derive(Clone, Copy)]
pub struct Site {
    pub hook: HookId,
    pub ifindex: u32,
    /// The container whose veth it is (0: not a container's hook).
    pub container_id: u32,
    /// Where its counters are.
    pub slot: StatsSlot,
    /// Count passing packets here (false where another hook already
    /// counted them: uplink tc ingress behind XDP).
    pub count: bool,
}

impl Site {
    /// A hook of `container`'s veth (`ifindex`), or of a veth the datapath
    /// has no container for.
    #[inline(always)]
    pub fn veth(hook: HookId, ifindex: u32, container: Option<&ContainerEntry>) -> Site {
        match container {
            Some(c) => Site { hook, ifindex, container_id: c.id, slot: StatsSlot::of(c), count: true },
            None => Site { hook, ifindex, container_id: 0, slot: StatsSlot::UNATTRIBUTED, count: true },
        }
    }

    /// A hook of the uplink; `count`: see [`Site::count`].
    #[inline(always)]
    pub fn uplink(hook: HookId, ifindex: u32, count: bool) -> Site {
        Site { hook, ifindex, container_id: 0, slot: StatsSlot::UPLINK, count }
    }
}

/// Counts the outcome; true if the packet passes.
#[inline(always)]
pub fn finish(pkt: &impl Packet, site: Site, len: u32, result: Result<(), DropReason>) -> bool {
    match result {
        Ok(()) => {
            if site.count {
                count_packet(site.slot, site.hook.hook().side(), len);
            }
            true
        }
        Err(reason) => {
            drop_frame(pkt, site, reason);
            false
        }
    }
}

/// Is the frame IPv6 (by its EtherType)?
#[inline(always)]
fn ethertype_is_ipv6(pkt: &impl Packet) -> bool {
    // SAFETY: bounds-checked by `ptr_at`.
    crate::packet::ptr_at::<[u8; 2]>(pkt, 12).is_some_and(|t| unsafe { *t } == [0x86, 0xdd])
}

/// Counts a drop and tells the monitor about it (within the CPU's event
/// budget: under a flood the counters go on, the events pause). Out of
/// line: the parse for the event's tuple needs stack the callers do not
/// have.
#[inline(never)]
fn drop_frame(pkt: &impl Packet, site: Site, reason: DropReason) {
    count_drop(site.slot, reason);
    if !events::drop_event_admitted() {
        return;
    }
    let origin = events::Origin {
        kind: EVENT_DROP,
        reason: reason as u8,
        hook: site.hook,
        ifindex: site.ifindex,
        container_id: site.container_id,
    };
    if ethertype_is_ipv6(pkt) {
        return events::emit_drop6(pkt, origin);
    }
    let key = flow::parse4(pkt).map(|f| f.key).unwrap_or_default();
    events::emit::<[u8; 4]>(origin, &key, false);
}
