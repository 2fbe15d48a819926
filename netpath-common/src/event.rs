//! Records the datapath sends to the agent through the `EVENTS` ring
//! buffer, for `netpathctl monitor`.

use crate::CtKey4;

/// A frame was dropped; `reason` is a [`crate::DropReason`].
pub const EVENT_DROP: u8 = 1;
/// A new flow was allowed (only while a monitor asks for flows).
pub const EVENT_FLOW: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub timestamp_ns: u64,
    pub kind: u8,
    pub reason: u8,
    /// The [`crate::HookId`] of the program that saw the packet (which also
    /// tells the flow's direction on a container's veth).
    pub hook: u8,
    pub _pad: u8,
    pub ifindex: u32,
    /// The container's id (0: not a container's hook).
    pub container_id: u32,
    /// The packet's tuple (zero for non-IPv4 frames).
    pub key: CtKey4,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
