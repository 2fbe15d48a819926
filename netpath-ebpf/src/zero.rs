//! All-zero values, written with word stores.
//!
//! Not `Default`, `mem::zeroed`, `write_bytes` or a literal with zero
//! fields: LLVM's BPF backend, as bpf-linker 0.10.4 runs it (LLVM 22),
//! lowers every `llvm.memset` (which each of those becomes, whatever its
//! size and alignment) to a call of compiler_builtins' `memset`, a loop
//! storing one byte per iteration. Zeroing a 64-byte struct that way is a
//! BPF-to-BPF call and some 330 instructions, and the verifier walks the
//! loop byte by byte; here it is 16 stores at most. The stores are
//! volatile because LLVM merges plain zero stores back into a memset.

use aya_ebpf::bindings::{bpf_fib_lookup, bpf_redir_neigh};
use aya_ebpf::btf_maps::lpm_trie::Key;
use netpath_common::{mapping::SockRevNatKey6, CtEntry, CtKey, PolicyKey};

/// A type whose every field may be zero (plain data: integers, byte
/// arrays, addresses).
///
/// # Safety
/// All-zero bytes must be a valid value of the type.
pub unsafe trait Zeroable {}

// SAFETY: plain data (integers and addresses).
unsafe impl<A: Zeroable> Zeroable for CtEntry<A> {}
// SAFETY: as above.
unsafe impl<A: Zeroable> Zeroable for CtKey<A> {}
// SAFETY: as above.
unsafe impl<A: Zeroable> Zeroable for PolicyKey<A> {}
// SAFETY: plain data.
unsafe impl Zeroable for SockRevNatKey6 {}
// SAFETY: a prefix length and plain data.
unsafe impl<T: Zeroable> Zeroable for Key<T> {}
// SAFETY: byte arrays (IPv4 addresses, padding).
unsafe impl<const N: usize> Zeroable for [u8; N] {}
// SAFETY: four 32-bit words.
unsafe impl Zeroable for netpath_common::In6Addr {}
// SAFETY: the kernel's parameter block, plain integers and unions of them.
unsafe impl Zeroable for bpf_fib_lookup {}
// SAFETY: as above.
unsafe impl Zeroable for bpf_redir_neigh {}

/// A zero value (an address, a small key) by value.
#[inline(always)]
pub fn zeroed<T: Zeroable>() -> T {
    let mut slot = core::mem::MaybeUninit::uninit();
    zeroed_in(&mut slot);
    // SAFETY: initialized by `zeroed_in`.
    unsafe { slot.assume_init() }
}

/// `slot`, zeroed, ready for its fields to be set.
#[inline(always)]
pub fn zeroed_in<T: Zeroable>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    // SAFETY: `slot` is valid for writes of a `T`; all-zero is a valid `T`
    // (`Zeroable`), so it is initialized once zeroed.
    unsafe {
        zero(slot.as_mut_ptr());
        slot.assume_init_mut()
    }
}

/// Zeroes `*dst` in place, with stores of the widest word `T`'s alignment
/// allows (its size is a multiple of that alignment).
///
/// # Safety
/// `dst` must be valid for writes of a `T`.
#[inline(always)]
pub unsafe fn zero<T: Zeroable>(dst: *mut T) {
    let size = core::mem::size_of::<T>();
    // SAFETY: the caller's; `T`'s alignment allows words of that width.
    unsafe {
        match core::mem::align_of::<T>() {
            8.. => words::<u64>(dst.cast(), size / 8),
            4 => words::<u32>(dst.cast(), size / 4),
            2 => words::<u16>(dst.cast(), size / 2),
            _ => words::<u8>(dst.cast(), size),
        }
    }
}

/// `n` zero words of type `W` from `dst` on (unrolled: `n` is a constant).
#[inline(always)]
unsafe fn words<W: Default>(dst: *mut W, n: usize) {
    for i in 0..n {
        // SAFETY: the caller's.
        unsafe { core::ptr::write_volatile(dst.add(i), W::default()) };
    }
}
