//! IPv6 beside IPv4 (issue 12): one published port reached from the world
//! over each family, on dual-stack beds, each variant doing the same job
//! for both: plain routing (no-nat), Docker's layout in `iptables` and
//! `ip6tables`, nftables maps in an `ip` and an `ip6` table, and netpath
//! (one mapping, `8080:c1:80`, which answers on both families). Short
//! connections and single-stream throughput, the two families interleaved
//! round by round like the variants.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::Result;
use netpath_tests::topology::{Topology, HOST_UPLINK_IP, HOST_UPLINK_IP6};
use serde::Serialize;

use super::{
    bed::{self, Bed, Variant, CONTAINER_PORT, HIT_PORT},
    iptables,
    load::{self, ConnRate},
    netpath::NetpathBed,
    nftables,
    options::{Options, Section},
    plain::{PlainNet, CONTAINER_IP6, SUBNET6},
    results::{Series, Target},
    schedule::{Lane, Lanes},
    server::Server,
};

/// The two families, in the order they are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

enum DualBed {
    Plain { variant: Variant, net: PlainNet },
    Netpath(NetpathBed),
}

impl DualBed {
    fn new(variant: Variant) -> Result<DualBed> {
        let plain = |net: PlainNet| -> Result<DualBed> {
            net.add_ipv6()?;
            Ok(DualBed::Plain { variant, net })
        };
        let bed = match variant {
            Variant::NoNat => {
                let bed = plain(PlainNet::new()?)?;
                if let DualBed::Plain { net, .. } = &bed {
                    net.route_from_world()?;
                    net.route6_from_world()?;
                }
                bed
            }
            Variant::Iptables => {
                let net = PlainNet::new()?;
                net.docker_bridge_netfilter()?;
                let ports = bed::port_list(1);
                net.iptables_restore(
                    "v4.rules",
                    &iptables::ruleset(&net.subnet, &net.container_ip.to_string(), &ports),
                )?;
                net.ip6tables_restore("v6.rules", &iptables::ruleset6(&SUBNET6, CONTAINER_IP6, &[HIT_PORT]))?;
                plain(net)?
            }
            Variant::Nftables => {
                let net = PlainNet::new()?;
                let ports = bed::port_list(1);
                net.nft_file("v4.nft", &nftables::ruleset(&net.subnet, &net.container_ip.to_string(), &ports))?;
                net.nft_file("v6.nft", &nftables::ruleset6(&SUBNET6, CONTAINER_IP6, &[HIT_PORT]))?;
                plain(net)?
            }
            Variant::Netpath => DualBed::Netpath(NetpathBed::dual_stack(&[])?),
            Variant::NetpathStack => DualBed::Netpath(NetpathBed::dual_stack(&["--no-fast-path"])?),
        };
        Ok(bed)
    }

    fn topology(&self) -> &Topology {
        match self {
            DualBed::Plain { net, .. } => &net.topo,
            DualBed::Netpath(bed) => bed.topology(),
        }
    }

    /// Where the world's clients connect over `family`.
    fn target(&self, family: Family) -> SocketAddr {
        let routed = matches!(self, DualBed::Plain { variant: Variant::NoNat, .. });
        match (family, self) {
            (Family::Ipv4, DualBed::Plain { net, .. }) if routed => {
                SocketAddrV4::new(net.container_ip, CONTAINER_PORT).into()
            }
            (Family::Ipv6, _) if routed => SocketAddrV6::new(CONTAINER_IP6, CONTAINER_PORT, 0, 0).into(),
            (Family::Ipv4, _) => SocketAddrV4::new(HOST_UPLINK_IP, HIT_PORT).into(),
            (Family::Ipv6, _) => SocketAddrV6::new(HOST_UPLINK_IP6, HIT_PORT, 0, 0).into(),
        }
    }
}

/// What one variant measured, per family.
#[derive(Default)]
pub struct DualSamples {
    pub conn_rate: [Vec<ConnRate>; 2],
    pub throughput_gbit: [Vec<f64>; 2],
    pub notes: Vec<String>,
}

struct DualLane {
    variant: Variant,
    // Dropped before the bed, so that the server threads end before the
    // container's namespace goes.
    servers: Vec<Server>,
    bed: DualBed,
    samples: DualSamples,
}

impl Lane for DualLane {
    type Key = Variant;
    type Samples = DualSamples;

    fn key(&self) -> Variant {
        self.variant
    }

    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn into_samples(mut self) -> DualSamples {
        self.servers.clear();
        self.samples
    }
}

impl DualLane {
    fn new(variant: Variant, opts: &Options) -> Result<DualLane> {
        let mut bed = DualBed::new(variant)?;
        let mut notes = vec![];
        if let DualBed::Netpath(np) = &mut bed {
            // One mapping without a host address: both families.
            np.publish(1)?;
            notes.push(format!(
                "{}: one mapping `{HIT_PORT}:c1:{CONTAINER_PORT}` (both families); {}",
                variant.name(),
                np.xdp_note()
            ));
        }
        let topo = bed.topology();
        let ctr = topo.container_ns(1);
        load::prepare_clients(topo, &topo.world)?;
        let servers = vec![
            Server::start(topo, &ctr, CONTAINER_PORT, opts.server_threads)?,
            Server::start6(topo, &ctr, CONTAINER_PORT, opts.server_threads)?,
        ];
        for family in Family::BOTH {
            load::wait_reachable(topo, &topo.world, bed.target(family))?;
        }
        Ok(DualLane { variant, servers, bed, samples: DualSamples { notes, ..Default::default() } })
    }

    fn conn_rate(&mut self, family: Family, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let rate = load::conn_rate(topo, &topo.world, self.bed.target(family), opts.client_threads, opts.load_time())?;
        eprintln!(
            "   {:<13} {}: {:>8.0} conn/s ({} errors)",
            self.variant.name(),
            family.name(),
            rate.per_sec,
            rate.errors
        );
        self.samples.conn_rate[family as usize].push(rate);
        Ok(())
    }

    fn throughput(&mut self, family: Family, opts: &Options) -> Result<()> {
        let topo = self.bed.topology();
        let gbit = load::throughput(topo, &topo.world, self.bed.target(family), opts.load_time())?;
        eprintln!("   {:<13} {}: {gbit:.2} Gbit/s", self.variant.name(), family.name());
        self.samples.throughput_gbit[family as usize].push(gbit);
        Ok(())
    }
}

/// The IPv6 section's measurements: every round measures every variant
/// over both families, the starting variant and family rotating.
pub fn run(opts: &Options, failures: &mut Vec<String>) -> Result<Vec<(Variant, DualSamples)>> {
    let mut lanes = Lanes::new(Section::Ipv6.name(), failures);
    for &variant in &opts.variants {
        lanes.set_up(variant, variant.name(), || DualLane::new(variant, opts))?;
    }
    let order = |round: usize| if round.is_multiple_of(2) { Family::BOTH } else { [Family::Ipv6, Family::Ipv4] };
    eprintln!("== ipv6: short connections to the published port, over IPv4 and IPv6");
    for round in 0..opts.rounds {
        for family in order(round) {
            lanes.each(round, "connection rate", |l| l.conn_rate(family, opts))?;
        }
    }
    eprintln!("== ipv6: single-stream throughput to the published port, over IPv4 and IPv6");
    for round in 0..opts.rounds {
        for family in order(round) {
            lanes.each(round, "throughput", |l| l.throughput(family, opts))?;
        }
    }
    Ok(lanes.finish(&opts.variants))
}

#[derive(Serialize)]
pub struct FamilyFigures {
    pub family: Family,
    pub conn_rate: Series,
    pub errors: Vec<u64>,
    pub throughput_gbit: Series,
}

#[derive(Serialize)]
pub struct DualVariantFigures {
    pub variant: Variant,
    /// IPv4, then IPv6.
    pub families: Vec<FamilyFigures>,
    pub notes: Vec<String>,
}

impl DualVariantFigures {
    pub fn family(&self, family: Family) -> Option<&FamilyFigures> {
        self.families.iter().find(|f| f.family == family)
    }

    pub fn rate(&self, family: Family) -> Option<f64> {
        self.family(family).map(|f| f.conn_rate.median).filter(|r| r.is_finite())
    }

    pub fn gbit(&self, family: Family) -> Option<f64> {
        self.family(family).map(|f| f.throughput_gbit.median).filter(|r| r.is_finite())
    }
}

#[derive(Serialize)]
pub struct Ipv6Figures {
    pub variants: Vec<DualVariantFigures>,
}

impl Ipv6Figures {
    pub fn new(samples: &[(Variant, DualSamples)]) -> Ipv6Figures {
        let variants = samples
            .iter()
            .map(|(v, s)| DualVariantFigures {
                variant: *v,
                families: Family::BOTH
                    .iter()
                    .map(|&family| FamilyFigures {
                        family,
                        conn_rate: Series::of(&s.conn_rate[family as usize], |c| c.per_sec),
                        errors: s.conn_rate[family as usize].iter().map(|c| c.errors).collect(),
                        throughput_gbit: Series::new(s.throughput_gbit[family as usize].clone()),
                    })
                    .collect(),
                notes: s.notes.clone(),
            })
            .collect();
        Ipv6Figures { variants }
    }

    pub fn variant(&self, v: Variant) -> Option<&DualVariantFigures> {
        self.variants.iter().find(|f| f.variant == v)
    }

    pub fn targets(&self) -> Vec<Target> {
        let section = Section::Ipv6.name();
        let rate = |v: Variant| self.variant(v).and_then(|f| f.rate(Family::Ipv6));
        let gbit = |v: Variant| self.variant(v).and_then(|f| f.gbit(Family::Ipv6));
        let mut out = vec![];
        for (other, what) in [
            (Variant::Iptables, "ipv6: netpath's IPv6 connection rate through a published port >= Docker's ip6tables'"),
            (
                Variant::Nftables,
                "ipv6: netpath's IPv6 connection rate through a published port >= an nftables ip6 map's",
            ),
            (
                Variant::NoNat,
                "ipv6: netpath's IPv6 connection rate through a published port >= plain IPv6 routing's (no-nat)",
            ),
        ] {
            out.push(match (rate(Variant::Netpath), rate(other)) {
                (Some(a), Some(b)) => {
                    Target::new(section, what, format!("{a:.0} vs {b:.0} conn/s ({:.2}x)", a / b), a >= b)
                }
                _ => Target::not_measured(section, what),
            });
        }
        let what = "ipv6: netpath's IPv6 single-stream throughput >= 95% of plain IPv6 routing's";
        out.push(match (gbit(Variant::Netpath), gbit(Variant::NoNat)) {
            (Some(a), Some(b)) => {
                Target::new(section, what, format!("{a:.2} vs {b:.2} Gbit/s = {:.1}%", 100.0 * a / b), a >= 0.95 * b)
            }
            _ => Target::not_measured(section, what),
        });
        out
    }
}
