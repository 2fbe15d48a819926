//! One-key lookups in the datapath's maps: the agent's typed access walks
//! whole maps, and the fuzzer asks about a key or two per frame.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{anyhow, Context as _, Result};
use netpath_userspace::datapath::Datapath;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A map of the loaded object, opened by its id.
pub struct MapFd {
    fd: OwnedFd,
    name: &'static str,
}

impl MapFd {
    pub fn open(dp: &mut Datapath, name: &'static str) -> Result<MapFd> {
        let id = dp.map_summaries()?.into_iter().find(|m| m.name == name).ok_or_else(|| anyhow!("no map {name}"))?.id;
        let mut attr = GetFdAttr { id, ..Default::default() };
        // SAFETY: attr is a valid bpf_attr prefix for this command.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_FD_BY_ID,
                &mut attr as *mut GetFdAttr,
                std::mem::size_of::<GetFdAttr>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("opening map {name} (id {id})"));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(MapFd { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, name })
    }

    /// The value at `key`, if there is one. `K` and `V` must be the map's
    /// own `#[repr(C)]` key and value types.
    pub fn get<K, V: Default>(&self, key: &K) -> Option<V> {
        let mut value = V::default();
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const K as u64,
            value: &mut value as *mut V as u64,
            ..Default::default()
        };
        // SAFETY: key and value point at objects of the map's sizes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if rc == 0 {
            return Some(value);
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "lookup in {}: {e}", self.name);
        None
    }
}
