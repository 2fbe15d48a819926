//! Records the datapath sends to the agent through the `EVENTS` ring
//! buffer, for `netpathctl monitor`.

use crate::{CtKey4, CtKey6};

/// A frame was dropped; `reason` is a [`crate::DropReason`].
pub const EVENT_DROP: u8 = 1;
/// A new flow was allowed (only while a monitor asks for flows).
pub const EVENT_FLOW: u8 = 2;

/// [`Event::family`] of an [`Event4`].
pub const EVENT_FAMILY_IPV4: u8 = 4;
/// [`Event::family`] of an [`Event6`].
pub const EVENT_FAMILY_IPV6: u8 = 6;

/// One record of the `EVENTS` ring buffer; the fields before `key` are
/// the same for both families, so a reader tells them apart by `family`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event<K> {
    pub timestamp_ns: u64,
    pub kind: u8,
    pub reason: u8,
    /// The [`crate::HookId`] of the program that saw the packet (which also
    /// tells the flow's direction on a container's veth).
    pub hook: u8,
    /// [`EVENT_FAMILY_IPV4`] or [`EVENT_FAMILY_IPV6`]: which key follows.
    pub family: u8,
    pub ifindex: u32,
    /// The container's id (0: not a container's hook).
    pub container_id: u32,
    /// The packet's tuple (zero where none could be read).
    pub key: K,
    pub _pad: u32,
}

/// An IPv4 packet's event.
pub type Event4 = Event<CtKey4>;
/// An IPv6 packet's event.
pub type Event6 = Event<CtKey6>;

/// Where [`Event::family`] sits in a record.
pub const EVENT_FAMILY_OFFSET: usize = 11;

/// Drop events each CPU sends the monitor per second, at most. Counters
/// count every drop; under a flood (a million dropped packets a second on
/// the uplink) one event per packet would cost more than the drop itself:
/// a ring buffer write per packet, and the agent woken to read them all.
pub const MAX_DROP_EVENTS_PER_SEC: u64 = 1000;

const SECOND_NS: u64 = 1_000_000_000;

/// A CPU's budget of drop events for the current second (`EVENT_BUDGET`,
/// one per CPU at index 0), with the events it held back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// When the current one-second window began (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Drop events sent in the window.
    pub sent: u64,
    /// Drop events held back since the map was created (the drops are
    /// counted all the same).
    pub suppressed: u64,
}

impl EventBudget {
    /// May a drop event go to the monitor at `now_ns`? Spends one from the
    /// budget, or counts it as suppressed.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64) -> bool {
        if now_ns.wrapping_sub(self.window_start_ns) >= SECOND_NS {
            self.window_start_ns = now_ns;
            self.sent = 0;
        }
        if self.sent >= MAX_DROP_EVENTS_PER_SEC {
            self.suppressed += 1;
            return false;
        }
        self.sent += 1;
        true
    }

    /// Sums per-CPU values (the suppressed count is what is read).
    pub fn merge(&mut self, other: &EventBudget) {
        self.suppressed += other.suppressed;
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Event6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EventBudget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_share_the_header_and_stay_8_byte_aligned() {
        assert_eq!(core::mem::offset_of!(Event4, family), EVENT_FAMILY_OFFSET);
        assert_eq!(core::mem::offset_of!(Event6, family), EVENT_FAMILY_OFFSET);
        assert_eq!(core::mem::offset_of!(Event4, key), core::mem::offset_of!(Event6, key));
        assert_eq!((core::mem::size_of::<Event4>() % 8, core::mem::size_of::<Event6>() % 8), (0, 0));
    }

    #[test]
    fn a_flood_of_drop_events_is_held_to_the_budget_per_second() {
        let mut b = EventBudget::default();
        let t0 = 5 * SECOND_NS;
        let admitted = (0..3 * MAX_DROP_EVENTS_PER_SEC).filter(|i| b.admit(t0 + i)).count() as u64;
        assert_eq!(admitted, MAX_DROP_EVENTS_PER_SEC);
        assert_eq!(b.suppressed, 2 * MAX_DROP_EVENTS_PER_SEC);
        // A second later, a fresh budget.
        assert!(b.admit(t0 + SECOND_NS));
        assert_eq!(b.sent, 1);
        // Quiet times send every event.
        let mut q = EventBudget::default();
        assert!((0..100).all(|i| q.admit(t0 + i * SECOND_NS / 100)));
    }
}
