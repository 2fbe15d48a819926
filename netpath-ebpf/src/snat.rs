//! Masquerade: a new flow from a container leaving through the uplink gets
//! the uplink address and a source port (or ICMP echo identifier) that no
//! other flow to the same destination uses.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use netpath_common::{
    conntrack::{CtState, CT_F_DNAT, CT_F_SNAT, IPPROTO_ICMP},
    CtEntry, CtKey, DatapathConfig, DropReason,
};

use crate::{
    conntrack::{self, CreateError},
    flow::Flow,
    nat, service,
};

/// Ports tried per new flow; a small range is walked completely.
const MAX_TRIES: u32 = 32;

/// Picks a free source port, records both directions and translates the
/// packet. No free port: the new flow is dropped, existing ones are never
/// touched.
#[inline(always)]
pub fn masquerade_new(ctx: &TcContext, flow: &Flow, cfg: &DatapathConfig) -> Result<(), DropReason> {
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    if min == 0 || max < min {
        return Ok(());
    }
    let range = max - min + 1;
    if range == 0 {
        // Cannot happen (min <= max); stated so that `%` needs no panic path.
        return Ok(());
    }
    let icmp = flow.key.proto == IPPROTO_ICMP;
    // Keep the container's own port when it is in range: fewer surprises.
    let own = u16::from_be(flow.key.sport) as u32;
    let mut port = if own >= min && own <= max { own } else { min + unsafe { bpf_get_prandom_u32() } % range };
    let mut fwd = CtEntry {
        snat_addr: cfg.masq_addr,
        flags: CT_F_SNAT,
        state: CtState::New as u8,
        packets: 1,
        bytes: ctx.len() as u64,
        ..Default::default()
    };
    let mut rev =
        CtEntry { dnat_addr: flow.key.saddr, dnat_port: flow.key.sport, flags: CT_F_DNAT, ..Default::default() };
    for _ in 0..MAX_TRIES {
        let port_be = (port as u16).to_be();
        let reply_key = CtKey::new(
            flow.key.daddr,
            cfg.masq_addr,
            if icmp { port_be } else { flow.key.dport },
            port_be,
            flow.key.proto,
        );
        // A published port's flows arrive on the same address and port:
        // never hand one out.
        let published = !icmp && service::lookup(cfg.masq_addr, port_be, flow.key.proto, false).is_some();
        if !published {
            fwd.snat_port = port_be;
            match conntrack::create(&flow.key, &mut fwd, &reply_key, &mut rev, flow.key.proto, cfg) {
                Ok(()) => return nat::apply(ctx, flow, &fwd),
                Err(CreateError::Taken) => {}
                Err(CreateError::Failed) => return Err(DropReason::TableFull),
            }
        }
        port = if port >= max { min } else { port + 1 };
    }
    Err(DropReason::NatExhausted)
}
