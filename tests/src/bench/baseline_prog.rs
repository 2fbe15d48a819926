//! Minimal tc programs, assembled here, that the per-program figures are
//! measured against in the same run:
//!
//! - [`EmptyProgram`]: `r0 = TC_ACT_OK; exit`, the runner's own overhead;
//! - [`ConntrackFloor`]: what any new flow pays the kernel for hash-table
//!   conntrack, whatever the program around it: one lookup that misses and
//!   two inserts (one entry per direction) into an LRU hash of the
//!   conntrack table's size, key and value. What a new flow costs above it
//!   is netpath's own work; the rest moves with the machine (cold buckets,
//!   LRU free lists), which a shared VM makes vary by 2x from minute to
//!   minute.
//!
//! And [`tcx_link`]: a bare tcx attachment of a program (the empty one),
//! which the attach curve samples beside netpath's container attaches;
//! [`XdpRedirect`]: the drop section's frame source.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, Result};
use netpath_common::{CtEntry4, CtEntry6, CtKey4, CtKey6};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// `r0 = TC_ACT_OK; exit`, loaded as a tc program: the runner's overhead.
pub(super) struct EmptyProgram(OwnedFd);

impl EmptyProgram {
    pub(super) fn load() -> Result<EmptyProgram> {
        let insns = [mov_imm(0, 0), exit()];
        Ok(EmptyProgram(
            load_program(BPF_PROG_TYPE_SCHED_CLS, &insns, b"empty").context("loading the empty tc program")?,
        ))
    }

    pub(super) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A lookup miss and two inserts per run into a map of its own (see the
/// module docs). The key is a `CtKey4`-sized (or `CtKey6`-sized) buffer
/// holding the frame's addresses and TCP ports where the key has them: a
/// frame with a new client address or port each run is a new flow each run,
/// and the run returns a verdict other than TC_ACT_OK if an insert failed
/// (a frame seen before).
pub(super) struct ConntrackFloor {
    prog: OwnedFd,
    // Held for the program's life (the program holds it too).
    _map: OwnedFd,
}

/// The family of a [`ConntrackFloor`]'s table and frames.
#[derive(Clone, Copy)]
pub(super) enum FloorFamily {
    /// `CtKey4`, `CtEntry4`, untagged IPv4 frames.
    Ipv4,
    /// `CtKey6`, `CtEntry6`, untagged IPv6 frames without extension headers.
    Ipv6,
}

impl FloorFamily {
    /// The key's and the value's sizes, and where the frame's addresses
    /// and TCP ports (source, destination, then the ports, as the key
    /// holds them from its start) are and how long they are together.
    fn layout(self) -> (usize, usize, i32, i32) {
        match self {
            // Bytes 26..38: the IPv4 header's addresses, then the ports.
            FloorFamily::Ipv4 => (std::mem::size_of::<CtKey4>(), std::mem::size_of::<CtEntry4>(), 26, 12),
            // Bytes 22..58: the IPv6 header's addresses, then the ports.
            FloorFamily::Ipv6 => (std::mem::size_of::<CtKey6>(), std::mem::size_of::<CtEntry6>(), 22, 36),
        }
    }
}

impl ConntrackFloor {
    pub(super) fn load(entries: u32, family: FloorFamily) -> Result<ConntrackFloor> {
        let (key_size, value_size, tuple_off, tuple_len) = family.layout();
        let (key_size, value_size) = (key_size as i16, value_size.next_multiple_of(8) as i16);
        let map = create_lru_hash(key_size as u32, value_size as u32, entries)
            .context("creating the conntrack floor's LRU hash")?;
        let fd = map.as_raw_fd();
        let (key, value) = (-key_size, -key_size - value_size);
        let mut insns = vec![mov_reg(6, 1)];
        // The verifier wants every stack byte a helper reads written first.
        insns.extend((0..(key_size + value_size) / 8).map(|i| store_dw_imm(10, -8 * (i + 1), 0)));
        // The key holds the addresses and the TCP ports, as the family's
        // conntrack key does.
        insns.extend([mov_reg(1, 6), mov_imm(2, tuple_off), mov_reg(3, 10), add_imm(3, key as i32)]);
        insns.extend([mov_imm(4, tuple_len), call(BPF_FUNC_SKB_LOAD_BYTES)]);
        // The conntrack lookup that misses.
        insns.extend(ld_map_fd(1, fd));
        insns.extend([mov_reg(2, 10), add_imm(2, key as i32), call(BPF_FUNC_MAP_LOOKUP_ELEM)]);
        // The original direction's entry, then the reply's (another key).
        // The program returns both results ORed: TC_ACT_OK (0) only if both
        // entries went in.
        for direction in 0..2 {
            if direction == 1 {
                // The byte behind the ports (the protocol): another key.
                insns.extend([mov_reg(7, 0), store_b_imm(10, key + tuple_len as i16, 1)]);
            }
            insns.extend(ld_map_fd(1, fd));
            insns.extend([mov_reg(2, 10), add_imm(2, key as i32), mov_reg(3, 10), add_imm(3, value as i32)]);
            insns.extend([mov_imm(4, BPF_NOEXIST), call(BPF_FUNC_MAP_UPDATE_ELEM)]);
        }
        insns.extend([or_reg(0, 7), exit()]);
        let prog = load_program(BPF_PROG_TYPE_SCHED_CLS, &insns, b"ct_floor")
            .context("loading the conntrack floor program")?;
        Ok(ConntrackFloor { prog, _map: map })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.prog.as_raw_fd()
    }
}

/// `return bpf_redirect(ifindex, 0)`, an XDP program. Run by
/// BPF_PROG_TEST_RUN in live-frames mode (`prog_run::run_live_frames`) it
/// hands every frame to the interface `ifindex` the way a driver's XDP
/// redirect does (`ndo_xdp_xmit`): the far end of a veth then receives XDP
/// frames, no skb yet, as a host's XDP program gets them from a NIC.
pub(super) struct XdpRedirect(OwnedFd);

impl XdpRedirect {
    pub(super) fn load(ifindex: u32) -> Result<XdpRedirect> {
        let insns = [mov_imm(1, ifindex as i32), mov_imm(2, 0), call(BPF_FUNC_REDIRECT), exit()];
        let prog = load_program(BPF_PROG_TYPE_XDP, &insns, b"redirect").context("loading the XDP redirect program")?;
        Ok(XdpRedirect(prog))
    }

    pub(super) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
const BPF_FUNC_REDIRECT: i32 = 23;
const BPF_FUNC_SKB_LOAD_BYTES: i32 = 26;
const BPF_NOEXIST: i32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// One `struct bpf_insn`, little endian: opcode, registers (dst low
/// nibble), offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64 | (dst as u64) << 8 | (src as u64) << 12 | ((off as u16) as u64) << 16 | ((imm as u32) as u64) << 32
}

fn mov_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

fn mov_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}

fn or_reg(dst: u8, src: u8) -> u64 {
    insn(0x4f, dst, src, 0, 0)
}

fn add_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}

fn store_dw_imm(dst: u8, off: i16, imm: i32) -> u64 {
    insn(0x7a, dst, 0, off, imm)
}

fn store_b_imm(dst: u8, off: i16, imm: i32) -> u64 {
    insn(0x72, dst, 0, off, imm)
}

fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}

fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0)
}

/// `dst = map` (a 16-byte instruction the kernel resolves from the fd).
fn ld_map_fd(dst: u8, fd: RawFd) -> [u64; 2] {
    [insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd), 0]
}

/// `BPF_LINK_CREATE`'s attributes for a tcx link (the `tcx` member of
/// `link_create`'s union: a relative fd or id, and an expected revision).
#[repr(C)]
#[derive(Default)]
struct TcxLinkAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// A tcx link of `prog` on the interface `ifindex` of the calling thread's
/// namespace, on its egress side if `egress`, else its ingress; closing
/// the returned fd detaches it.
pub(super) fn tcx_link(prog: RawFd, ifindex: u32, egress: bool) -> Result<OwnedFd> {
    let attach_type = if egress { BPF_TCX_EGRESS } else { BPF_TCX_INGRESS };
    let attr = TcxLinkAttr { prog_fd: prog as u32, target_ifindex: ifindex, attach_type, ..Default::default() };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_LINK_CREATE.
    bpf_fd(unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &attr as *const TcxLinkAttr, std::mem::size_of::<TcxLinkAttr>())
    })
    .with_context(|| format!("creating a tcx link on interface {ifindex}"))
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

fn load_program(prog_type: u32, insns: &[u64], name: &[u8]) -> Result<OwnedFd> {
    let license = b"GPL\0";
    // The kernel's name is 15 bytes and a NUL.
    let name = &name[..name.len().min(15)];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name);
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    // SAFETY: attr points at valid instructions and license for the call.
    bpf_fd(unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>())
    })
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn create_lru_hash(key_size: u32, value_size: u32, max_entries: u32) -> Result<OwnedFd> {
    let attr = MapCreateAttr { map_type: BPF_MAP_TYPE_LRU_HASH, key_size, value_size, max_entries, map_flags: 0 };
    // SAFETY: attr is a valid prefix of union bpf_attr for BPF_MAP_CREATE
    // (the kernel zero-fills the rest).
    bpf_fd(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>(),
        )
    })
}

/// The file descriptor a bpf(2) call returned, owned.
fn bpf_fd(ret: libc::c_long) -> Result<OwnedFd> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the kernel returned a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        assert_eq!(mov_imm(0, 0), 0xb7);
        assert_eq!(exit(), 0x95);
        // r3 += -16: opcode 0x07, dst 3, imm 0xfffffff0.
        assert_eq!(add_imm(3, -16), 0xffff_fff0_0000_0307);
        // *(u64 *)(r10 - 8) = 0: dst 10, offset 0xfff8.
        assert_eq!(store_dw_imm(10, -8, 0), 0x0000_0000_fff8_0a7a);
        assert_eq!(ld_map_fd(1, 7), [0x0000_0007_0000_1118, 0]);
    }

    /// Loads the programs (the verifier accepts them) and shows that each
    /// family's floor inserts once per flow, keyed by the whole addresses
    /// and the ports: a frame's second run finds its entries taken, a
    /// frame from another port or from an address differing in its last
    /// byte is another flow.
    #[test]
    fn the_floor_inserts_once_per_flow_and_the_empty_program_passes() {
        use netpath_tests::{frames, prog_run::run};
        let frame4 = |last: u8, sport| {
            let (src, dst) = ([192, 0, 2, last], [192, 0, 2, 2]);
            let seg = frames::tcp(src, dst, sport, 80, 0x02, b"");
            frames::eth([2; 6], [4; 6], frames::ETH_P_IPV4, &frames::ipv4(src, dst, 6, &[], &seg))
        };
        let frame6 = |last: u8, sport| {
            let (mut src, dst) = ([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xfd; 16]);
            src[15] = last;
            let seg = frames::tcp6(src, dst, sport, 80, 0x02, b"");
            frames::eth([2; 6], [4; 6], frames::ETH_P_IPV6, &frames::ipv6(src, dst, 6, &seg))
        };
        let empty = EmptyProgram::load().unwrap();
        assert_eq!(run(empty.fd(), &frame4(1, 1), 1).unwrap().verdict, 0);
        for family in [FloorFamily::Ipv4, FloorFamily::Ipv6] {
            let floor = ConntrackFloor::load(1024, family).unwrap();
            let frame = |last, sport| match family {
                FloorFamily::Ipv4 => frame4(last, sport),
                FloorFamily::Ipv6 => frame6(last, sport),
            };
            let verdict = |last, sport| run(floor.fd(), &frame(last, sport), 1).unwrap().verdict;
            assert_eq!(verdict(1, 1), 0, "a new flow's two inserts");
            assert_ne!(verdict(1, 1), 0, "the same flow again: both keys taken");
            assert_eq!(verdict(1, 2), 0, "from another port");
            assert_eq!(verdict(3, 2), 0, "from another address");
        }
    }

    /// A tcx link of the empty program is on the veth's side it names
    /// while its fd is open, and gone once it is closed.
    #[test]
    fn a_tcx_link_attaches_until_closed() {
        use aya::programs::{SchedClassifier, TcAttachType};
        use netpath_tests::topology::Topology;
        let mut t = Topology::new(0).unwrap();
        let ns = t.new_netns("tl").unwrap();
        t.exec(&ns, &["ip", "link", "add", "tl0", "type", "veth", "peer", "name", "tl1"]).unwrap();
        let empty = EmptyProgram::load().unwrap();
        let on = |side| {
            t.in_ns(&ns, || Ok(SchedClassifier::query_tcx("tl0", side).map_or(0, |(_, progs)| progs.len()))).unwrap()
        };
        let (ingress, egress) = t
            .in_ns(&ns, || {
                let ifindex = nix::net::if_::if_nametoindex("tl0")?;
                Ok((tcx_link(empty.fd(), ifindex, false)?, tcx_link(empty.fd(), ifindex, true)?))
            })
            .unwrap();
        assert_eq!((on(TcAttachType::Ingress), on(TcAttachType::Egress)), (1, 1));
        drop((ingress, egress));
        assert_eq!((on(TcAttachType::Ingress), on(TcAttachType::Egress)), (0, 0));
    }
}
