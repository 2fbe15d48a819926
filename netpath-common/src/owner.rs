//! Owners of tracked flows (mappings, containers) and how the datapath tells
//! a live one from a removed one without the agent walking conntrack.
//!
//! Every owner id is unique over the agent's lifetime (ids only grow) and
//! occupies the slot `id % OWNER_SLOTS` of its table (`MAPPING_IDS`,
//! `CONTAINER_IDS`, pinned arrays): the slot holds the id of the owner that
//! is live there, or 0. The agent never gives two live owners the same slot
//! (a new id skips taken slots), so the slot plays the role of an index and
//! the id that of a generation. A conntrack entry records its owners' ids;
//! on a hit, an id that is not the one live in its slot marks the entry
//! stale: the datapath deletes it (and its peer) and takes the packet as a
//! miss. Removing an owner is then one array write, whatever the number of
//! flows it had; the GC collects the stale entries it did not meet.
//!
//! Chosen over an index of flows per owner: flows are created by the kernel,
//! so an index kept by the agent would need a walk to learn of them, and one
//! kept by the datapath would cost map writes on every new flow. The check
//! is an inlined array read on hits of entries that have an owner.

/// Slots per owner table: the capacity of the mapping table (the larger of
/// the two owner tables; containers use as many slots as they need).
pub const OWNER_SLOTS: u32 = 131072;

const _: () = assert!(OWNER_SLOTS as usize == crate::maps::MAX_MAPPINGS);
const _: () = assert!(OWNER_SLOTS as usize >= crate::maps::MAX_CONTAINERS);
const _: () = assert!(OWNER_SLOTS.is_power_of_two());

/// The slot of owner `id`.
#[inline(always)]
pub const fn slot(id: u32) -> u32 {
    id & (OWNER_SLOTS - 1)
}

/// Is an entry owned by `id` live, given what its slot holds (`in_slot`)?
/// Id 0 means no owner: never stale.
#[inline(always)]
pub fn live(id: u32, in_slot: Option<u32>) -> bool {
    id == 0 || in_slot == Some(id)
}

/// The first id from `next` (ids 0 excluded) whose slot `taken` does not
/// report; and the id to continue from. None when a whole lap of slots is
/// taken (callers check the table's capacity first: a request past it must
/// be refused, never loop).
pub fn next_free(mut next: u32, taken: impl Fn(u32) -> bool) -> Option<(u32, u32)> {
    // One lap plus id 0, which has a slot but is never issued.
    for _ in 0..=OWNER_SLOTS {
        let id = next;
        next = next.wrapping_add(1);
        if id != 0 && !taken(slot(id)) {
            return Some((id, next));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_skip_taken_slots_and_zero() {
        assert_eq!(next_free(5, |_| false), Some((5, 6)));
        // Slot 5 taken by a live owner: the next id in sequence goes.
        assert_eq!(next_free(5, |s| s == 5), Some((6, 7)));
        // An id of slot 5 a lap later is another generation of the same slot.
        assert_eq!(slot(5 + OWNER_SLOTS), 5);
        assert_eq!(next_free(u32::MAX, |_| false), Some((u32::MAX, 0)));
        assert_eq!(next_free(0, |_| false), Some((1, 2)));
        // The last free slot is found wherever the scan starts; none left
        // is an answer, not a loop.
        assert_eq!(next_free(9, |s| s != 3), Some((OWNER_SLOTS + 3, OWNER_SLOTS + 4)));
        assert_eq!(next_free(9, |_| true), None);
    }

    #[test]
    fn an_owner_is_live_only_while_its_slot_holds_its_id() {
        assert!(live(0, None), "no owner");
        assert!(live(7, Some(7)));
        assert!(!live(7, Some(0)), "removed");
        assert!(!live(7, Some(7 + OWNER_SLOTS)), "slot reused by a newer owner");
        assert!(!live(7, None));
    }
}
