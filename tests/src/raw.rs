//! Raw sockets for attack tests: a container with CAP_NET_RAW sends any
//! frame or IP packet it likes, and a victim captures what reaches its
//! interface. Create them inside a namespace (`Topology::in_ns`): a socket
//! keeps the namespace it was made in.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

const ETH_P_ALL: u16 = 0x0003;

/// An AF_PACKET socket bound to one interface: sends whole Ethernet frames
/// and receives every frame the interface sees.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a packet socket on `ifname` of the calling thread's namespace.
    pub fn open(ifname: &str) -> Result<PacketSocket> {
        Self::bound(ifname, ETH_P_ALL)
    }

    /// A packet socket that only sends (protocol 0: it receives, and so
    /// clones, nothing), for floods.
    pub fn open_send_only(ifname: &str) -> Result<PacketSocket> {
        Self::bound(ifname, 0)
    }

    /// The socket's descriptor (for batched sends).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn bound(ifname: &str, protocol: u16) -> Result<PacketSocket> {
        // SAFETY: plain socket(2) call; the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (protocol.to_be()) as i32) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("no interface {ifname}"));
        }
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("binding a packet socket to {ifname}"));
        }
        Ok(PacketSocket { fd })
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr() as *const libc::c_void, frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a raw frame");
        }
        Ok(())
    }

    /// Waits up to `timeout` for a received frame containing `marker`.
    pub fn saw(&self, marker: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let tv = libc::timeval { tv_sec: left.as_secs() as i64, tv_usec: left.subsec_micros().max(1) as i64 };
            // SAFETY: tv is a valid timeval.
            unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                return false;
            }
            if buf[..n as usize].windows(marker.len()).any(|w| w == marker) {
                return true;
            }
        }
        false
    }
}

/// A raw IPv4 socket that sends whole IP packets (IP_HDRINCL), as a
/// container with CAP_NET_RAW can.
pub struct RawIpSocket {
    fd: OwnedFd,
}

impl RawIpSocket {
    pub fn open() -> Result<RawIpSocket> {
        // SAFETY: plain socket(2) call; the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(AF_INET, SOCK_RAW)");
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        Ok(RawIpSocket { fd: unsafe { OwnedFd::from_raw_fd(raw) } })
    }

    /// Sends `packet` (an IPv4 header and what follows) to its destination.
    pub fn send(&self, packet: &[u8]) -> Result<()> {
        let dst = [packet[16], packet[17], packet[18], packet[19]];
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst);
        // SAFETY: valid buffer and address of the sizes given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                0,
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a raw IP packet");
        }
        Ok(())
    }
}
