//! The live event monitor: the agent drains the datapath's `EVENTS` ring
//! buffer and fans the records out to every `netpathctl monitor`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use netpath_common::{
    conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    event::{EVENT_DROP, EVENT_FAMILY_IPV6, EVENT_FAMILY_OFFSET},
    family::IPPROTO_ICMPV6,
    Direction, DropReason, Event, Event4, Event6, HookId,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::broadcast};

/// One event as the API streams it (newline-delimited JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MonitorEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    /// `drop` or `flow`.
    pub kind: String,
    /// Why a frame was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The program that saw the packet (`veth_ingress`, `uplink_xdp`, ...).
    pub hook: String,
    /// On a container's veth: `out` (the container sent it) or `in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub ifindex: u32,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// A record of the `EVENTS` ring buffer, of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatapathEvent {
    V4(Event4),
    V6(Event6),
}

impl DatapathEvent {
    /// Reads one ring buffer record: its family byte says which; a record
    /// too short for it is none.
    pub fn from_record(bytes: &[u8]) -> Option<DatapathEvent> {
        // SAFETY (both reads): `Event4`/`Event6` are plain data of the size
        // checked, read unaligned.
        match *bytes.get(EVENT_FAMILY_OFFSET)? {
            EVENT_FAMILY_IPV6 if bytes.len() >= std::mem::size_of::<Event6>() => {
                Some(DatapathEvent::V6(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event6) }))
            }
            EVENT_FAMILY_IPV6 => None,
            _ if bytes.len() >= std::mem::size_of::<Event4>() => {
                Some(DatapathEvent::V4(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event4) }))
            }
            _ => None,
        }
    }

    /// The container the event is about (0: none).
    pub fn container_id(&self) -> u32 {
        match self {
            DatapathEvent::V4(e) => e.container_id,
            DatapathEvent::V6(e) => e.container_id,
        }
    }
}

impl MonitorEvent {
    /// `container` names the container id, if it is one of ours.
    pub fn from_raw(e: &DatapathEvent, container: Option<String>) -> MonitorEvent {
        match e {
            DatapathEvent::V4(e) => Self::of(e, container, |a| Ipv4Addr::from(a).into()),
            DatapathEvent::V6(e) => Self::of(e, container, |a| Ipv6Addr::from(a).into()),
        }
    }

    fn of<A: Copy>(e: &Event<netpath_common::CtKey<A>>, container: Option<String>, ip: impl Fn(A) -> IpAddr) -> Self {
        let reason = (e.kind == EVENT_DROP)
            .then(|| DropReason::from_u32(e.reason as u32).map(|r| r.name().to_string()))
            .flatten();
        let hook = HookId::from_u8(e.hook).map(HookId::hook);
        MonitorEvent {
            time_ns: e.timestamp_ns,
            kind: if e.kind == EVENT_DROP { "drop".into() } else { "flow".into() },
            reason,
            hook: hook.map(|h| h.program.to_string()).unwrap_or_else(|| e.hook.to_string()),
            direction: hook.and_then(|h| h.container_direction()),
            container,
            ifindex: e.ifindex,
            proto: match e.key.proto {
                IPPROTO_ICMP => "icmp".into(),
                IPPROTO_ICMPV6 => "icmpv6".into(),
                IPPROTO_TCP => "tcp".into(),
                IPPROTO_UDP => "udp".into(),
                0 => "-".into(),
                p => p.to_string(),
            },
            src: ip(e.key.saddr),
            sport: u16::from_be(e.key.sport),
            dst: ip(e.key.daddr),
            dport: u16::from_be(e.key.dport),
        }
    }

    /// One human-readable line.
    pub fn line(&self) -> String {
        let who = self.container.as_deref().unwrap_or("-");
        let what = match &self.reason {
            Some(r) => format!("DROP {r}"),
            None => "FLOW".into(),
        };
        let direction = self.direction.map_or("-", Direction::name);
        format!(
            "{:>10.3} {what:<26} {who:<12} {direction:<4} {:<14} {} {} -> {}",
            self.time_ns as f64 / 1e9,
            self.hook,
            self.proto,
            std::net::SocketAddr::new(self.src, self.sport),
            std::net::SocketAddr::new(self.dst, self.dport),
        )
    }
}

/// Reads the ring buffer until the process ends, sending each record to
/// `tx` (a lagging subscriber loses events, never the reader).
pub fn spawn_reader(ring: RingBuf<MapData>, tx: broadcast::Sender<DatapathEvent>) -> Result<()> {
    // SAFETY: the ring buffer owns its descriptor and is moved into the
    // AsyncFd, which deregisters it before dropping it.
    let mut fd =
        unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("registering the EVENTS ring buffer: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(e) = DatapathEvent::from_record(&item) {
                    let _ = tx.send(e);
                }
            }
            guard.clear_ready();
        }
    });
    Ok(())
}
