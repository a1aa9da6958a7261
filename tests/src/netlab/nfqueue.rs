//! A minimal NFQUEUE client: one `NETLINK_NETFILTER` socket bound to any number of queues,
//! (queue, packet id) pairs in, verdicts out.
//!
//! Owns the netlink wire format of `nfnetlink_queue` (linux/netfilter/nfnetlink_queue.h); not the
//! timing (`delay.rs`) nor the iptables rule that feeds the queue (`links.rs`).
//!
//! Why not the `nfq` crate: it hides its socket, so a thread can only block in `recv()` or spin on
//! a non-blocking one; the delayer must sleep in `ppoll()` until the next packet is due. The subset
//! needed here (bind, metadata-only copy, queue length, flags, verdicts) is small and is built with
//! safe byte pushes; `unsafe` is confined to the libc socket calls.
//!
//! # Contract
//! * The socket belongs to the network namespace of the thread that calls [`NfQueue::open`]
//!   (queues are per namespace): enter the host's namespace first.
//! * Only metadata is copied to user space (`NFQNL_COPY_META`): a packet costs ~100 bytes of netlink
//!   traffic whatever its size.
//! * Verdicts may be given in any order; many are sent in one datagram (the kernel walks every
//!   netlink message in it).
//! * Unbinding a queue, or closing the socket (drop), makes the kernel drop the packets of it still
//!   waiting for a verdict, so callers release them first.
//!
//! Tests: `tests/tests/netlab.rs` (delay, loss) — this needs root and a kernel, so no unit tests.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Queue flag: accept packets (undelayed) instead of dropping them when the queue is full.
pub const F_FAIL_OPEN: u32 = 1;
/// Queue flag: hand GSO super-packets over whole instead of segmenting them first.
pub const F_GSO: u32 = 4;
const FLAGS_MASK: u32 = F_FAIL_OPEN | F_GSO;

/// Receive buffer asked for (SO_RCVBUFFORCE, root only): room for tens of thousands of queued
/// metadata messages, so a busy moment does not overflow the socket (which would fail open).
const RCVBUF: libc::c_int = 16 << 20;
/// Verdicts per datagram; 32 bytes each.
const VERDICTS_PER_SEND: usize = 1024;

/// An NFQUEUE socket.
pub struct NfQueue {
    fd: OwnedFd,
    seq: u32,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Packets read while waiting for a config acknowledgement, returned by the next read.
    backlog: Vec<(u16, u32)>,
    /// Verdicts the kernel refused (e.g. a packet flushed meanwhile); counted, not fatal.
    pub verdict_errors: u64,
}

impl NfQueue {
    /// Opens a socket in the calling thread's network namespace, bound to no queue yet.
    pub fn open() -> io::Result<NfQueue> {
        // SAFETY: plain socket(2); the returned descriptor is owned by `fd` right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF)?;
        }
        // Overflow then fails open in the kernel instead of reporting ENOBUFS to us.
        setsockopt(raw, libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1)?;
        // SAFETY: an all-zero sockaddr_nl is valid (port id chosen by the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a live sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NfQueue {
            fd,
            seq: 0,
            rx: vec![0; 1 << 16],
            tx: Vec::with_capacity(VERDICTS_PER_SEND * 32),
            backlog: Vec::new(),
            verdict_errors: 0,
        })
    }

    /// Binds queue `num` with a metadata-only copy, `max_len` held packets at most, and `flags`
    /// (`F_*`).
    pub fn bind(&mut self, num: u16, max_len: u32, flags: u32) -> io::Result<()> {
        // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf }
        self.config(num, &[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])])?;
        // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode } (packed, 5 bytes)
        let params = [0, 0, 0, 0, NFQNL_COPY_META];
        self.config(
            num,
            &[
                (NFQA_CFG_PARAMS, &params),
                (NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes()),
            ],
        )?;
        self.set_flags(num, flags)
    }

    /// Unbinds queue `num` (the kernel drops its packets still waiting for a verdict).
    pub fn unbind(&mut self, num: u16) -> io::Result<()> {
        self.config(num, &[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_UNBIND, 0, 0, 0])])
    }

    /// Replaces queue `num`'s `F_*` flags.
    pub fn set_flags(&mut self, num: u16, flags: u32) -> io::Result<()> {
        self.config(
            num,
            &[
                (NFQA_CFG_FLAGS, &flags.to_be_bytes()),
                (NFQA_CFG_MASK, &FLAGS_MASK.to_be_bytes()),
            ],
        )
    }

    /// Appends (queue, packet id) of every packet that can be read now without blocking.
    pub fn read_packets(&mut self, ids: &mut Vec<(u16, u32)>) -> io::Result<()> {
        ids.append(&mut self.backlog);
        while !matches!(self.recv_one(ids, None)?, Read::Nothing) {}
        Ok(())
    }

    /// Sends one verdict per `(queue, packet id, accept)`.
    pub fn verdicts(&mut self, items: &[(u16, u32, bool)]) -> io::Result<()> {
        for chunk in items.chunks(VERDICTS_PER_SEND) {
            let mut tx = std::mem::take(&mut self.tx);
            tx.clear();
            for &(num, id, accept) in chunk {
                let start = begin(&mut tx, NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, num);
                // struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id }
                let mut hdr = [0u8; 8];
                hdr[..4].copy_from_slice(&(if accept { NF_ACCEPT } else { NF_DROP }).to_be_bytes());
                hdr[4..].copy_from_slice(&id.to_be_bytes());
                attr(&mut tx, NFQA_VERDICT_HDR, &hdr);
                finish(&mut tx, start);
            }
            let sent = self.send(&tx);
            self.tx = tx;
            sent?;
        }
        Ok(())
    }

    /// Sends a config message and waits for its acknowledgement (packets read meanwhile go to
    /// the backlog).
    fn config(&mut self, num: u16, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let mut msg = Vec::with_capacity(64);
        let start = begin(
            &mut msg,
            NFQNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            num,
        );
        for (ty, payload) in attrs {
            attr(&mut msg, *ty, payload);
        }
        finish(&mut msg, start);
        self.send(&msg)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut ids = std::mem::take(&mut self.backlog);
        let acked = loop {
            match self.recv_one(&mut ids, Some(seq)) {
                Ok(Read::Ack) => break Ok(()),
                Ok(Read::Data) => {}
                Ok(Read::Nothing) if std::time::Instant::now() < deadline => {
                    if let Err(e) = wait_readable(self.fd.as_raw_fd(), Duration::from_millis(100)) {
                        break Err(e);
                    }
                }
                Ok(Read::Nothing) => {
                    break Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no acknowledgement from nfnetlink_queue",
                    ))
                }
                Err(e) => break Err(e),
            }
        };
        self.backlog = ids;
        acked
    }

    /// Reads one datagram without blocking; (queue, packet id) pairs go to `ids`. A refusal of the config
    /// message `ack_for` is returned as the kernel's errno.
    fn recv_one(&mut self, ids: &mut Vec<(u16, u32)>, ack_for: Option<u32>) -> io::Result<Read> {
        // SAFETY: `rx` is a live buffer of the length passed.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.rx.as_mut_ptr().cast(),
                self.rx.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Read::Nothing),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > self.rx.len() {
            return Err(io::Error::other(format!(
                "netlink datagram of {n} bytes truncated"
            )));
        }
        let mut off = 0;
        let mut acked = false;
        while off + NLMSG_HDRLEN <= n {
            let m = &self.rx[off..n];
            let len = u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize;
            if len < NLMSG_HDRLEN || len > m.len() {
                break;
            }
            let ty = u16::from_ne_bytes([m[4], m[5]]);
            let seq = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]);
            let body = &m[NLMSG_HDRLEN..len];
            if ty == NLMSG_ERROR && body.len() >= 4 {
                let errno = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                match (Some(seq) == ack_for, errno) {
                    (true, 0) => acked = true,
                    (true, e) => return Err(io::Error::from_raw_os_error(e)),
                    (false, 0) => {}
                    (false, _) => self.verdict_errors += 1,
                }
            } else if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
                if let (Some(id), Some(num)) = (packet_id(body), body.get(2..4)) {
                    // nfgenmsg.res_id: the queue number, big-endian.
                    ids.push((u16::from_be_bytes([num[0], num[1]]), id));
                }
            }
            off += (len + 3) & !3;
        }
        Ok(if acked { Read::Ack } else { Read::Data })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl addresses the kernel (port id 0).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `to` are live for the call and the lengths match them.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What one non-blocking read found.
enum Read {
    Nothing,
    Data,
    /// The datagram held the acknowledgement that was waited for.
    Ack,
}

impl AsRawFd for NfQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The packet id in a `NFQNL_MSG_PACKET` body (nfgenmsg, then attributes).
fn packet_id(body: &[u8]) -> Option<u32> {
    let mut a = body.get(NFGENMSG_LEN..)?;
    while a.len() >= 4 {
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let ty = u16::from_ne_bytes([a[2], a[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > a.len() {
            return None;
        }
        if ty == NFQA_PACKET_HDR && len >= 8 {
            // struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook }
            return Some(u32::from_be_bytes([a[4], a[5], a[6], a[7]]));
        }
        a = a.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// Starts a nfnetlink_queue message (nlmsghdr + nfgenmsg); returns where it starts.
fn begin(buf: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, queue: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    buf.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]); // family, NFNETLINK_V0
    buf.extend_from_slice(&queue.to_be_bytes());
    start
}

/// Appends one attribute, padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize((buf.len() + 3) & !3, 0);
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length says so.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passed.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    super::delay::poll_fds(&[fd], Some(timeout)).map(|_| ())
}
