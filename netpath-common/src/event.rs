//! Records the datapath sends to the agent through the `EVENTS` ring
//! buffer, for `netpathctl monitor`.

use crate::CtKey;

/// A frame was dropped; `reason` is a [`crate::DropReason`].
pub const EVENT_DROP: u8 = 1;
/// A new flow was allowed (only while a monitor asks for flows).
pub const EVENT_FLOW: u8 = 2;

/// The hook saw the packet leave the container (its veth's ingress).
pub const EVENT_DIR_FROM_EP: u8 = 1;
/// The hook saw the packet reach the container (its veth's egress).
pub const EVENT_DIR_TO_EP: u8 = 2;
/// On the uplink.
pub const EVENT_DIR_UPLINK: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub timestamp_ns: u64,
    pub kind: u8,
    pub reason: u8,
    pub direction: u8,
    pub _pad: u8,
    pub ifindex: u32,
    /// The container's endpoint id (0: not a container's hook).
    pub endpoint_id: u32,
    /// The packet's tuple (zero for non-IPv4 frames).
    pub key: CtKey,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
