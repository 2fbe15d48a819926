//! The address family as the datapath's stages see it: the maps of each
//! family, and what the stages that are generic over it (conntrack, policy,
//! fragments) ask of a family beyond its addresses. IPv4 is `[u8; 4]`,
//! IPv6 `In6Addr`; the stages are written once, for both.

use core::mem::MaybeUninit;

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, LruHashMap},
    programs::TcContext,
};
use netpath_common::{
    maps::{MAX_CT_ENTRIES, MAX_FRAGS},
    policy::POLICY_KEY_FIXED_BITS,
    AddrFamily, CtEntry, CtKey, Direction, DropReason, FragEntry, FragKey, In6Addr, MappingEntry, PolicyEntry,
    PolicyKey,
};

use crate::{
    flow::{self, Flow, Parsed},
    icmp_error, ipv6, mapping,
    maps::{
        CONTAINER_IPS4, CONTAINER_IPS6, CT4, CT6, FRAGS4, FRAGS6, HOST_ADDRS4, HOST_ADDRS6, POLICY4, POLICY6, SCRATCH6,
    },
    nat, zero,
};

pub type CtMap<A> = LruHashMap<CtKey<A>, CtEntry<A>, MAX_CT_ENTRIES>;

/// Room outside the stack for what a new flow writes (its verdict pair's
/// keys and entry, its first fragment's record) and for map keys, for a
/// family whose values are too big for the judge's call chain (IPv6's).
#[repr(C)]
pub struct Scratch<A: AddrFamily> {
    pub key: CtKey<A>,
    pub reply_key: CtKey<A>,
    pub entry: CtEntry<A>,
    /// The policy trie's key, and a host address to look up.
    pub policy_key: Key<PolicyKey<A>>,
    pub addr: A,
    /// A new published flow's reply half (its original half: `entry`).
    pub reply_entry: CtEntry<A>,
    pub frag_key: FragKey<A>,
    pub frag_entry: FragEntry<A>,
}
pub type FragMap<A> = LruHashMap<FragKey<A>, FragEntry<A>, MAX_FRAGS>;

pub trait Family: AddrFamily + zero::Zeroable + 'static {
    /// Address bits (the policy trie's full prefix).
    const BITS: u32;

    /// Does the family have NAT stages (published ports, masquerade)? The
    /// judge's look at a flow's translation exists only where one can.
    const HAS_NAT: bool;

    /// Are the family's new verdicts and fragment records written in its
    /// [`Scratch`] (a const, so that the other family's instance has no
    /// stack fallback to spend its frame on)?
    const IN_SCRATCH: bool;

    /// Connection tracking (`CT4`, `CT6`).
    fn ct() -> &'static CtMap<Self>;

    /// First fragments' verdicts and translations (`FRAGS4`, `FRAGS6`).
    fn frags() -> &'static FragMap<Self>;

    /// The policy entry of the longest prefix holding `remote`, for the
    /// container's rules in `direction` (`POLICY4`, `POLICY6`).
    fn policy_rules(container_id: u32, direction: Direction, remote: Self) -> Option<&'static PolicyEntry>;

    /// Is this one of the host's own addresses (`HOST_ADDRS4`, `HOST_ADDRS6`)?
    fn is_host_addr(self) -> bool;

    /// The tuple of the packet an ICMP error in `ctx` (its header at
    /// `icmp_off`) quotes, as it travelled; None if it is nothing netpath
    /// tracks.
    fn quoted_error(ctx: &TcContext, icmp_off: usize) -> Result<Option<CtKey<Self>>, DropReason>;

    /// This CPU's [`Scratch`], for a family whose verdicts are built
    /// outside the stack (`None`: built on the stack).
    fn scratch() -> Option<*mut Scratch<Self>>;

    /// The published port `addr:port/proto` leads to (a mapping bound to
    /// the address, else a wildcard one if it is the host's), from
    /// `MAPPINGS4`/`MAPPINGS6`.
    fn published(addr: &Self, port: u16, proto: u8) -> Option<&'static MappingEntry<Self>>;

    /// Rewrites the packet of `flow` as its conntrack `entry` says
    /// (`nat::apply4`, `nat::apply6`).
    fn apply_nat(ctx: &TcContext, flow: &Flow<Self>, entry: &CtEntry<Self>) -> Result<(), DropReason>;

    /// Sets the source address and port of the packet of `flow`
    /// (`nat::set_source4`, `nat::set_source6`).
    fn set_source(ctx: &TcContext, flow: &Flow<Self>, addr: &Self, port: u16) -> Result<(), DropReason>;

    /// The packet's flow (`flow::parse4`, `ipv6::parse6`).
    fn parse(ctx: &TcContext) -> Parsed<Self>;

    /// The interface (CONTAINERS' key) of the container with this address
    /// (`CONTAINER_IPS4`, `CONTAINER_IPS6`).
    fn container_ifindex(self) -> Option<u32>;
}

/// The trie key for `remote` under the container's rules in `direction`.
#[inline(always)]
fn policy_key<A: Family>(
    slot: &mut MaybeUninit<Key<PolicyKey<A>>>,
    container_id: u32,
    direction: Direction,
    remote: A,
) -> &Key<PolicyKey<A>> {
    // Field by field on a zeroed key: `PolicyKey::new`'s zero padding
    // would be a call of the byte-wise memset (see crate::zero).
    let key = zero::zeroed_in(slot);
    key.prefix_len = POLICY_KEY_FIXED_BITS + A::BITS;
    (key.data.container_id, key.data.direction, key.data.addr) = (container_id.to_be_bytes(), direction as u8, remote);
    key
}

impl Family for [u8; 4] {
    const BITS: u32 = 32;
    const HAS_NAT: bool = true;
    const IN_SCRATCH: bool = false;

    #[inline(always)]
    fn ct() -> &'static CtMap<Self> {
        &CT4
    }

    #[inline(always)]
    fn frags() -> &'static FragMap<Self> {
        &FRAGS4
    }

    #[inline(always)]
    fn policy_rules(container_id: u32, direction: Direction, remote: Self) -> Option<&'static PolicyEntry> {
        POLICY4.get(policy_key(&mut MaybeUninit::uninit(), container_id, direction, remote))
    }

    #[inline(always)]
    fn is_host_addr(self) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { HOST_ADDRS4.get(&self) }.is_some()
    }

    #[inline(always)]
    fn published(addr: &Self, port: u16, proto: u8) -> Option<&'static MappingEntry<Self>> {
        mapping::lookup4(*addr, port, proto, false)
    }

    #[inline(always)]
    fn apply_nat(ctx: &TcContext, flow: &Flow<Self>, entry: &CtEntry<Self>) -> Result<(), DropReason> {
        nat::apply4(ctx, flow, entry)
    }

    #[inline(always)]
    fn set_source(ctx: &TcContext, flow: &Flow<Self>, addr: &Self, port: u16) -> Result<(), DropReason> {
        nat::set_source4(ctx, flow, *addr, port)
    }

    #[inline(always)]
    fn parse(ctx: &TcContext) -> Parsed<Self> {
        flow::parse4(ctx)
    }

    #[inline(always)]
    fn container_ifindex(self) -> Option<u32> {
        // SAFETY: the value is copied out at once.
        unsafe { CONTAINER_IPS4.get(&self) }.copied()
    }

    #[inline(always)]
    fn quoted_error(ctx: &TcContext, _icmp_off: usize) -> Result<Option<CtKey<Self>>, DropReason> {
        Ok(icmp_error::quoted4(ctx)?.map(|q| q.key))
    }

    #[inline(always)]
    fn scratch() -> Option<*mut Scratch<Self>> {
        None
    }
}

impl Family for In6Addr {
    const BITS: u32 = 128;
    const HAS_NAT: bool = true;
    const IN_SCRATCH: bool = true;

    #[inline(always)]
    fn ct() -> &'static CtMap<Self> {
        &CT6
    }

    #[inline(always)]
    fn frags() -> &'static FragMap<Self> {
        &FRAGS6
    }

    /// The trie key is written in this CPU's scratch, off the stack.
    #[inline(always)]
    fn policy_rules(container_id: u32, direction: Direction, remote: Self) -> Option<&'static PolicyEntry> {
        // SAFETY: this CPU's scratch, used by this run only.
        let s = unsafe { &mut *Self::scratch()? };
        s.policy_key.prefix_len = POLICY_KEY_FIXED_BITS + Self::BITS;
        s.policy_key.data.container_id = container_id.to_be_bytes();
        s.policy_key.data.direction = direction as u8;
        // SAFETY: as above.
        unsafe { zero::zero(&raw mut s.policy_key.data._pad) };
        s.policy_key.data.addr = remote;
        POLICY6.get(&s.policy_key)
    }

    #[inline(always)]
    fn is_host_addr(self) -> bool {
        let Some(s) = Self::scratch() else { return false };
        // SAFETY: this CPU's scratch; the value is only tested for presence.
        let s = unsafe { &mut *s };
        s.addr = self;
        unsafe { HOST_ADDRS6.get(&s.addr) }.is_some()
    }

    #[inline(always)]
    fn published(addr: &Self, port: u16, proto: u8) -> Option<&'static MappingEntry<Self>> {
        mapping::lookup6(addr, port, proto, false)
    }

    #[inline(always)]
    fn apply_nat(ctx: &TcContext, flow: &Flow<Self>, entry: &CtEntry<Self>) -> Result<(), DropReason> {
        nat::apply6(ctx, flow, entry)
    }

    #[inline(always)]
    fn set_source(ctx: &TcContext, flow: &Flow<Self>, addr: &Self, port: u16) -> Result<(), DropReason> {
        nat::set_source6(ctx, flow, addr, port)
    }

    #[inline(always)]
    fn parse(ctx: &TcContext) -> Parsed<Self> {
        ipv6::parse6(ctx)
    }

    #[inline(always)]
    fn container_ifindex(self) -> Option<u32> {
        // SAFETY: the value is copied out at once.
        unsafe { CONTAINER_IPS6.get(&self) }.copied()
    }

    #[inline(always)]
    fn quoted_error(ctx: &TcContext, icmp_off: usize) -> Result<Option<CtKey<Self>>, DropReason> {
        ipv6::quoted6(ctx, icmp_off)
    }

    #[inline(always)]
    fn scratch() -> Option<*mut Scratch<Self>> {
        SCRATCH6.get_ptr_mut(0)
    }
}
