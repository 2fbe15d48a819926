//! The masquerade beds: a container whose connections to a server in the
//! world leave through the host, with each variant's way of giving them a
//! source the world can answer.
//!
//! - no-nat: the plain topology, and a route in the world back to the
//!   container subnet via the host (no translation at all);
//! - iptables: the plain topology with Docker's layout and no published
//!   port, i.e. nat `POSTROUTING -s <subnet> ! -o np0 -j MASQUERADE` and the
//!   filter `FORWARD` chains a container's outgoing packets walk;
//! - nftables: the plain topology with one nat postrouting chain holding
//!   `ip saddr <subnet> oifname != "np0" masquerade`;
//! - netpath: netpathd with its default settings: masquerade on the
//!   uplink.

use std::net::Ipv4Addr;

use anyhow::Result;
use netpath_tests::topology::{Topology, HOST_UPLINK_IP};

use super::{bed::Variant, iptables, netpath::NetpathBed, nftables, plain::PlainNet};

pub enum MasqBed {
    Plain { variant: Variant, net: PlainNet },
    Netpath(NetpathBed),
}

impl MasqBed {
    pub fn new(variant: Variant) -> Result<MasqBed> {
        let plain = |net: PlainNet| MasqBed::Plain { variant, net };
        Ok(match variant {
            Variant::NoNat => {
                let net = PlainNet::new()?;
                net.route_from_world()?;
                plain(net)
            }
            Variant::Iptables => {
                let net = PlainNet::new()?;
                net.docker_bridge_netfilter()?;
                net.iptables_restore(
                    "masq.rules",
                    &iptables::ruleset(&net.subnet, &net.container_ip.to_string(), &[]),
                )?;
                plain(net)
            }
            Variant::Nftables => {
                let net = PlainNet::new()?;
                net.nft_file("masq.nft", &nftables::masquerade_ruleset(&net.subnet))?;
                plain(net)
            }
            Variant::Netpath => MasqBed::Netpath(NetpathBed::new()?),
            Variant::NetpathStack => MasqBed::Netpath(NetpathBed::with_args(&["--no-fast-path"])?),
        })
    }

    pub fn topology(&self) -> &Topology {
        match self {
            MasqBed::Plain { net, .. } => &net.topo,
            MasqBed::Netpath(bed) => super::bed::Bed::topology(bed),
        }
    }

    /// The client address the world's server must see: the container's
    /// own without NAT, the host's uplink address with it.
    pub fn expected_source(&self) -> Ipv4Addr {
        match self {
            MasqBed::Plain { variant: Variant::NoNat, net } => net.container_ip,
            _ => HOST_UPLINK_IP,
        }
    }

    pub fn netpath(&self) -> Option<&NetpathBed> {
        match self {
            MasqBed::Netpath(bed) => Some(bed),
            MasqBed::Plain { .. } => None,
        }
    }
}
