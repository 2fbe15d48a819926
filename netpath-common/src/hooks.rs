//! The hook table: every BPF program netpath has, and where it hangs. This
//! is the one declaration that the agent's loader, attacher, pin names,
//! reconciliation and `status` all read, and that events name their hook
//! by; a test checks it against the programs in the object file.

/// The side of an interface a tc hook sees.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Frames arriving on the interface (on a container's host-side veth:
    /// what the container sends).
    Ingress = 0,
    /// Frames leaving through the interface (on a container's host-side
    /// veth: what the container receives).
    Egress = 1,
}

/// The cgroup sock_addr hooks, for host processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockAddrHook {
    Connect4,
    Sendmsg4,
    Recvmsg4,
    Getpeername4,
    Connect6,
    Sendmsg6,
    Recvmsg6,
    Getpeername6,
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// tcx on one side of an interface.
    Tcx(Side),
    /// XDP on an interface.
    Xdp,
    /// A sock_addr hook on a cgroup.
    SockAddr(SockAddrHook),
}

/// What a program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The host side of every container's veth pair.
    ContainerVeth,
    /// The uplink, if the instance has one.
    Uplink,
    /// The cgroup the socket hooks hang on.
    Cgroup,
}

/// Identifies a hook; the value is the hook's index in [`HOOKS`] and is what
/// [`crate::Event::hook`] carries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookId {
    VethIngress = 0,
    VethEgress = 1,
    UplinkXdp = 2,
    UplinkIngress = 3,
    UplinkEgress = 4,
    SockConnect4 = 5,
    SockSendmsg4 = 6,
    SockRecvmsg4 = 7,
    SockGetpeername4 = 8,
    SockConnect6 = 9,
    SockSendmsg6 = 10,
    SockRecvmsg6 = 11,
    SockGetpeername6 = 12,
}

/// One hook: the program's name in the object (its entry point function),
/// how and where it is attached, and the name its link pin starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub id: HookId,
    pub program: &'static str,
    pub attach: Attach,
    pub target: Target,
    /// Link pins are `<pin_prefix>_<target name>`.
    pub pin_prefix: &'static str,
}

/// Every hook, indexed by [`HookId`].
pub const HOOKS: [Hook; 13] = [
    Hook {
        id: HookId::VethIngress,
        program: "veth_ingress",
        attach: Attach::Tcx(Side::Ingress),
        target: Target::ContainerVeth,
        pin_prefix: "tcx-ingress",
    },
    Hook {
        id: HookId::VethEgress,
        program: "veth_egress",
        attach: Attach::Tcx(Side::Egress),
        target: Target::ContainerVeth,
        pin_prefix: "tcx-egress",
    },
    Hook {
        id: HookId::UplinkXdp,
        program: "uplink_xdp",
        attach: Attach::Xdp,
        target: Target::Uplink,
        pin_prefix: "xdp",
    },
    Hook {
        id: HookId::UplinkIngress,
        program: "uplink_ingress",
        attach: Attach::Tcx(Side::Ingress),
        target: Target::Uplink,
        pin_prefix: "tcx-ingress",
    },
    Hook {
        id: HookId::UplinkEgress,
        program: "uplink_egress",
        attach: Attach::Tcx(Side::Egress),
        target: Target::Uplink,
        pin_prefix: "tcx-egress",
    },
    Hook {
        id: HookId::SockConnect4,
        program: "sock_connect4",
        attach: Attach::SockAddr(SockAddrHook::Connect4),
        target: Target::Cgroup,
        pin_prefix: "connect4",
    },
    Hook {
        id: HookId::SockSendmsg4,
        program: "sock_sendmsg4",
        attach: Attach::SockAddr(SockAddrHook::Sendmsg4),
        target: Target::Cgroup,
        pin_prefix: "sendmsg4",
    },
    Hook {
        id: HookId::SockRecvmsg4,
        program: "sock_recvmsg4",
        attach: Attach::SockAddr(SockAddrHook::Recvmsg4),
        target: Target::Cgroup,
        pin_prefix: "recvmsg4",
    },
    Hook {
        id: HookId::SockGetpeername4,
        program: "sock_getpeername4",
        attach: Attach::SockAddr(SockAddrHook::Getpeername4),
        target: Target::Cgroup,
        pin_prefix: "getpeername4",
    },
    Hook {
        id: HookId::SockConnect6,
        program: "sock_connect6",
        attach: Attach::SockAddr(SockAddrHook::Connect6),
        target: Target::Cgroup,
        pin_prefix: "connect6",
    },
    Hook {
        id: HookId::SockSendmsg6,
        program: "sock_sendmsg6",
        attach: Attach::SockAddr(SockAddrHook::Sendmsg6),
        target: Target::Cgroup,
        pin_prefix: "sendmsg6",
    },
    Hook {
        id: HookId::SockRecvmsg6,
        program: "sock_recvmsg6",
        attach: Attach::SockAddr(SockAddrHook::Recvmsg6),
        target: Target::Cgroup,
        pin_prefix: "recvmsg6",
    },
    Hook {
        id: HookId::SockGetpeername6,
        program: "sock_getpeername6",
        attach: Attach::SockAddr(SockAddrHook::Getpeername6),
        target: Target::Cgroup,
        pin_prefix: "getpeername6",
    },
];

impl HookId {
    /// This hook's row of [`HOOKS`].
    pub const fn hook(self) -> &'static Hook {
        &HOOKS[self as usize]
    }

    pub const fn program(self) -> &'static str {
        self.hook().program
    }

    /// The hook an event names, if the number is one.
    pub fn from_u8(v: u8) -> Option<HookId> {
        HOOKS.iter().map(|h| h.id).find(|id| *id as u8 == v)
    }
}

impl Hook {
    /// The hooks attached to one kind of target.
    pub fn on(target: Target) -> impl Iterator<Item = &'static Hook> {
        HOOKS.iter().filter(move |h| h.target == target)
    }

    /// The hook of a program, by name.
    pub fn by_program(name: &str) -> Option<&'static Hook> {
        HOOKS.iter().find(|h| h.program == name)
    }

    /// The side of the interface the hook sees (XDP: ingress).
    pub const fn side(&self) -> Side {
        match self.attach {
            Attach::Tcx(side) => side,
            Attach::Xdp | Attach::SockAddr(_) => Side::Ingress,
        }
    }

    /// The flow direction a container-veth hook sees: its ingress carries
    /// what the container sends (out), its egress what it receives (in).
    /// None for hooks that are not a container's.
    pub const fn container_direction(&self) -> Option<crate::Direction> {
        match (self.target, self.attach) {
            (Target::ContainerVeth, Attach::Tcx(Side::Ingress)) => Some(crate::Direction::Out),
            (Target::ContainerVeth, Attach::Tcx(Side::Egress)) => Some(crate::Direction::In),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_call_slots_index_their_tables() {
        for table in [&TAIL_CALLS[..], &DELIVER_CALLS[..]] {
            for (i, tail) in table.iter().enumerate() {
                assert_eq!(tail.slot as usize, i, "{}", tail.program);
            }
        }
        let mut programs: Vec<_> = TAIL_CALLS.iter().chain(&DELIVER_CALLS).map(|t| t.program).collect();
        programs.sort();
        programs.dedup();
        assert_eq!(programs.len(), TAIL_CALLS.len() + DELIVER_CALLS.len(), "a program in one slot only");
    }

    #[test]
    fn ids_index_the_table() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert_eq!(h.id as usize, i, "{} sits at the index of its id", h.program);
            assert_eq!(HookId::from_u8(i as u8), Some(h.id));
            assert_eq!(Hook::by_program(h.program), Some(h));
        }
        assert_eq!(HookId::from_u8(HOOKS.len() as u8), None);
    }

    #[test]
    fn pins_are_unique_per_target() {
        for a in &HOOKS {
            for b in &HOOKS {
                if a.id != b.id && a.target == b.target {
                    assert_ne!(a.pin_prefix, b.pin_prefix, "{} and {} would share a pin", a.program, b.program);
                }
            }
        }
    }

    #[test]
    fn container_hooks_name_their_direction() {
        assert_eq!(HookId::VethIngress.hook().container_direction(), Some(crate::Direction::Out));
        assert_eq!(HookId::VethEgress.hook().container_direction(), Some(crate::Direction::In));
        assert_eq!(HookId::UplinkIngress.hook().container_direction(), None);
    }
}

/// A program an entry point tail-calls into rather than calls: a path too
/// big to be verified inside its entry point along with the entry point's
/// own (each family's judging at a container's veth), verified on its own.
/// Its slot in its program array (`TAIL_CALLS`, `DELIVER_CALLS`) is its
/// index in the table listing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailCall {
    pub slot: u32,
    pub program: &'static str,
    /// The hook whose counters and events the program's outcome goes to:
    /// the entry point that jumps here, or for [`DELIVER_CALLS`] the
    /// receiving container's veth egress, whose judging it does.
    pub from: HookId,
}

/// IPv6 sent by a container (from `veth_ingress`).
pub const TAIL_VETH_INGRESS6: u32 = 0;
/// IPv6 delivered to a container (from `veth_egress`).
pub const TAIL_VETH_EGRESS6: u32 = 1;

/// IPv6 arriving on the uplink (from `uplink_ingress`).
pub const TAIL_UPLINK_INGRESS6: u32 = 2;

/// IPv6 leaving through the uplink (from `uplink_egress`).
pub const TAIL_UPLINK_EGRESS6: u32 = 3;

/// The IPv6 fast path, tail-called by `veth_ingress6` and `uplink_ingress6`
/// once a packet passed (its chain needs a stack of its own).
pub const TAIL_VETH_FORWARD6: u32 = 4;
pub const TAIL_UPLINK_FORWARD6: u32 = 5;

/// Every tail-called program, indexed by slot.
pub const TAIL_CALLS: [TailCall; 6] = [
    TailCall { slot: TAIL_VETH_INGRESS6, program: "veth_ingress6", from: HookId::VethIngress },
    TailCall { slot: TAIL_VETH_EGRESS6, program: "veth_egress6", from: HookId::VethEgress },
    TailCall { slot: TAIL_UPLINK_INGRESS6, program: "uplink_ingress6", from: HookId::UplinkIngress },
    TailCall { slot: TAIL_UPLINK_EGRESS6, program: "uplink_egress6", from: HookId::UplinkEgress },
    TailCall { slot: TAIL_VETH_FORWARD6, program: "veth_forward6", from: HookId::VethIngress },
    TailCall { slot: TAIL_UPLINK_FORWARD6, program: "uplink_forward6", from: HookId::UplinkIngress },
];

/// The fast path's judging, per family: a packet it would hand to a
/// container that has no verdict for its flow yet (the flow's first packet,
/// a verdict of older rules, a fragment, ICMP) is judged by that
/// container's inbound policy, as its veth's egress program would once the
/// stack took it there, and then handed to it. Jumped to from `forward4`
/// and `forward6` (in the ingress programs of veths and uplink).
pub const DELIVER4: u32 = 0;
pub const DELIVER6: u32 = 1;

/// Every program of the `DELIVER_CALLS` array, indexed by slot.
pub const DELIVER_CALLS: [TailCall; 2] = [
    TailCall { slot: DELIVER4, program: "deliver4", from: HookId::VethEgress },
    TailCall { slot: DELIVER6, program: "deliver6", from: HookId::VethEgress },
];
