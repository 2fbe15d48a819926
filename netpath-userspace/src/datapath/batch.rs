//! Batched reads of hash maps (`BPF_MAP_LOOKUP_BATCH`): one system call per
//! few thousand entries, where walking a map with aya's iterator costs two
//! per entry (next key, then lookup). Listing, cutting and collecting
//! flows, and counting entries for `status`, read whole tables; with 200k
//! tracked flows this is the difference between tens of milliseconds and
//! a few. aya has no batch operations, so the call is made here.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `enum bpf_cmd`: BPF_MAP_LOOKUP_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per call; a hash bucket holding more makes the kernel
/// answer ENOSPC, and the buffers grow. A call is one stretch of kernel
/// work that nothing preempts on a kernel built without preemption (most
/// distributions' default): 4096 entries of the conntrack table took ~1 ms
/// a call (p90 1.4 ms), during which an API call waiting for that CPU
/// waited; 512 keep each stretch near a tenth of that, for ~400 calls per
/// walk of 200k entries instead of ~50.
const CHUNK: usize = 512;

/// Hands every (key, value) of the hash map `fd` to `each`, as raw bytes of
/// `key_size` and `value_size` (not for per-CPU maps, whose values are one
/// per CPU). Entries added or removed meanwhile may or may not be seen, as
/// with any walk of a live map. Errors with `EINVAL`/`ENOTSUP` for map types
/// without batch lookups (callers fall back to iterating).
pub fn for_each_raw(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<()> {
    let mut chunk = CHUNK;
    let mut keys = vec![0u8; key_size * chunk];
    let mut values = vec![0u8; value_size * chunk];
    // The resume token: a bucket index for hash maps (u32), at most a key
    // for other types.
    let token_len = key_size.max(8);
    let mut token_in = vec![0u8; token_len];
    let mut token_out = vec![0u8; token_len];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the attribute points at buffers sized for `count` keys and
        // values and at tokens of `token_len` bytes, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let done = if rc < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // The end of the map; `count` holds the last entries.
                Some(libc::ENOENT) => true,
                // A bucket larger than the buffers: grow, ask again.
                Some(libc::ENOSPC) if chunk < (1 << 20) => {
                    chunk *= 2;
                    keys.resize(key_size * chunk, 0);
                    values.resize(value_size * chunk, 0);
                    continue;
                }
                _ => return Err(err),
            }
        } else {
            false
        };
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            each(&keys[i * key_size..(i + 1) * key_size], &values[i * value_size..(i + 1) * value_size]);
        }
        if done {
            return Ok(());
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// Every entry of the hash map `fd`, typed. `K` and `V` must be the map's
/// key and value types (the loader checks the sizes against the object).
pub fn entries<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    let mut out = vec![];
    for_each_raw(fd, ks, vs, |k, v| {
        // SAFETY: `k` and `v` hold exactly size_of K and V bytes, and Pod
        // types are valid for any bytes; the reads are unaligned-safe.
        let (k, v) =
            unsafe { (std::ptr::read_unaligned(k.as_ptr().cast()), std::ptr::read_unaligned(v.as_ptr().cast())) };
        out.push((k, v));
    })?;
    Ok(out)
}

/// How many entries the hash map `fd` holds (one batched walk).
pub fn count(fd: BorrowedFd<'_>, key_size: usize, value_size: usize) -> io::Result<u64> {
    let mut n = 0u64;
    for_each_raw(fd, key_size, value_size, |_, _| n += 1)?;
    Ok(n)
}
