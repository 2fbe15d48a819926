//! The fast path: packets the programs have judged and translated are handed
//! straight to the interface they leave by, rather than back to the stack
//! (bridge, routing, netfilter hooks, the veth backlog queue). What cannot
//! be redirected falls back to the stack, counted by why.

/// How a packet was redirected. Indexes [`ForwardStats::redirected`]; the
/// numbers are visible in `bpftool map dump`, keep them stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// Into a container (`bpf_redirect_peer`: the container's `eth0`
    /// receives it directly, skipping the bridge and its backlog queue).
    ToContainer = 0,
    /// Out of a host interface, next hop from `bpf_fib_lookup` with its MAC
    /// known (`bpf_redirect` to that interface's egress).
    ToHost = 1,
    /// Out of a host interface whose next hop's MAC is not resolved yet
    /// (`bpf_redirect_neigh` resolves it).
    ToHostResolving = 2,
    /// Into a container after its inbound policy judged the packet on the
    /// way (a new flow's first packet, or one without a current verdict):
    /// the `DELIVER_CALLS` program, instead of the stack and the veth's
    /// egress program.
    ToContainerJudged = 3,
}

/// Why a packet that could have been redirected went to the stack instead.
/// Indexes [`ForwardStats::fallbacks`]; numbers stable as above.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The TTL would expire on this hop: the stack sends the ICMP error.
    TtlExpiring = 0,
    /// Too big for the next interface: the stack fragments it or sends
    /// "fragmentation needed" (path-MTU discovery).
    MtuExceeded = 1,
    /// The route lookup gave no forwarding answer (unreachable, blackhole,
    /// prohibited, forwarding disabled...): the stack answers as it would.
    NoRoute = 2,
    /// The kernel refused the redirect.
    RedirectFailed = 3,
    /// The receiving container's interface is gone (it is being removed).
    NoInterface = 4,
    /// The receiving container has no current verdict for the packet's
    /// flow, and the fast path's judging program could not be jumped to
    /// (its `DELIVER_CALLS` slot empty; the agent fills it before it
    /// attaches the programs that jump there): the stack takes the packet
    /// to the container's veth, whose egress program judges it.
    Unjudged = 5,
}

pub const REDIRECT_COUNT: usize = 4;
pub const FALLBACK_COUNT: usize = 8;

impl Redirect {
    pub const ALL: [Redirect; 4] =
        [Redirect::ToContainer, Redirect::ToHost, Redirect::ToHostResolving, Redirect::ToContainerJudged];

    /// Short name used by the CLI and the API.
    pub const fn name(self) -> &'static str {
        match self {
            Redirect::ToContainer => "to-container",
            Redirect::ToHost => "to-host-interface",
            Redirect::ToHostResolving => "to-host-interface-resolving",
            Redirect::ToContainerJudged => "to-container-judged",
        }
    }
}

impl Fallback {
    pub const ALL: [Fallback; 6] = [
        Fallback::TtlExpiring,
        Fallback::MtuExceeded,
        Fallback::NoRoute,
        Fallback::RedirectFailed,
        Fallback::NoInterface,
        Fallback::Unjudged,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Fallback::TtlExpiring => "ttl-expiring",
            Fallback::MtuExceeded => "mtu-exceeded",
            Fallback::NoRoute => "no-route",
            Fallback::RedirectFailed => "redirect-failed",
            Fallback::NoInterface => "no-interface",
            Fallback::Unjudged => "unjudged",
        }
    }
}

/// Fast-path counters, per CPU, at index 0 of `FORWARD_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Packets redirected, indexed by [`Redirect`].
    pub redirected: [u64; REDIRECT_COUNT],
    /// Packets left to the stack, indexed by [`Fallback`].
    pub fallbacks: [u64; FALLBACK_COUNT],
}

impl ForwardStats {
    /// Sums per-CPU values.
    pub fn merge(&mut self, other: &ForwardStats) {
        for (a, b) in self.redirected.iter_mut().zip(other.redirected.iter()) {
            *a += *b;
        }
        for (a, b) in self.fallbacks.iter_mut().zip(other.fallbacks.iter()) {
            *a += *b;
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ForwardStats {}
