//! Batched UDP socket I/O: the one path by which the LTP driver sends and receives datagrams
//! (RFC 5326 §4: one segment per UDP datagram). `ltpperf --raw` uses it too, so that its raw-UDP
//! reference measures the same path as the LTP figures and their ratio is LTP's own cost.
//!
//! On Linux (unless [`IoConfig::batch`] is off):
//! * Receiving: one `recvmmsg(2)` fills up to [`IoConfig::recv_slots`] buffers of 64 KiB (a
//!   pool reused from call to call). With `UDP_GRO` (Linux ≥ 5.0, `udp(7)`) one buffer may hold
//!   several datagrams of one sender, all of the stride the kernel reports except the last,
//!   which is cut apart here. A buffer holding at least 16 KiB is handed out as is (zero copy: its
//!   datagrams are slices of it) and replaced in the pool; a smaller one is copied into a shared
//!   arena chunk, so that a 1400-octet datagram does not pin 64 KiB.
//! * Sending: datagrams are queued (FIFO, at most [`IoConfig::send_queue`]) and sent with
//!   `sendmmsg(2)`, up to 64 messages per call. With `UDP_SEGMENT` (GSO, Linux ≥ 4.18),
//!   consecutive datagrams to the same address and of the same size (the last may be shorter)
//!   go as one message that the kernel cuts into datagrams (at most 64 datagrams and 65 507
//!   octets per message). Nothing is copied: each datagram is one `iovec` of its `Bytes`.
//! * Fallbacks: a socket that refuses `UDP_GRO` or `UDP_SEGMENT` at setup does without it. A GSO
//!   message refused with `EIO` (the route's device cannot offload UDP checksums) stops GSO on
//!   this socket; one refused with `EINVAL` (segments larger than the route's MTU) stops GSO for
//!   datagrams that large. Either way that message is sent again datagram by datagram.
//!
//! Elsewhere (or with `batch` off): one `recv_from`/`send_to` per datagram behind the same
//! interface.
//!
//! Every failed send drops the datagram(s) and counts them ([`IoCounters::send_errors`]): UDP is
//! unreliable anyway and LTP recovers red data. A full socket buffer is not an error: the queue
//! waits for [`UdpIo::writable`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// Largest UDP payload, and the size of each receive buffer.
pub const MAX_DATAGRAM: usize = 65_536;
/// A received buffer at least this full is handed out without a copy.
const ZERO_COPY_MIN: usize = 16 * 1024;
/// Arena chunk that small received datagrams are copied into.
const RX_ARENA: usize = 1024 * 1024;

/// Settings of the batched socket I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoConfig {
    /// Most datagrams queued for sending (the driver takes output from the engine only while
    /// the queue has room; datagrams released from an impairment's delay may exceed it by that
    /// delay queue's own bound).
    pub send_queue: usize,
    /// Octets queued at which the queue is sent: [`UdpIo::batch_full`] says so, and the driver
    /// stops taking output from the engine and flushes. The default, 64 KiB, is one GSO
    /// message: larger batches save few system calls and hold more of the engine's freshly
    /// allocated segments at once, and freeing them together lets the allocator return the
    /// heap top to the kernel and fault it in again (with 60000-octet segments the sender took
    /// ~40 k page faults per 256 MiB when it queued a whole window per call).
    pub flush_bytes: usize,
    /// Receive buffers (64 KiB each) filled per `recvmmsg` call: the receive pool is
    /// `recv_slots × 64 KiB`.
    pub recv_slots: usize,
    /// Batch system calls (`recvmmsg`/`sendmmsg`; Linux only, ignored elsewhere).
    pub batch: bool,
    /// Use UDP GSO (`UDP_SEGMENT`) when the kernel accepts it (Linux, with `batch`).
    pub gso: bool,
    /// Use UDP GRO (`UDP_GRO`) when the kernel accepts it (Linux, with `batch`).
    pub gro: bool,
    /// Ask for the socket buffer sizes beyond `net.core.rmem_max`/`wmem_max` with
    /// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (Linux, needs CAP_NET_ADMIN; without it, or elsewhere,
    /// the plain request, capped by the kernel, is made).
    pub force_buffers: bool,
}

impl Default for IoConfig {
    /// Queue of 4096 datagrams, 32 receive buffers, batching, GSO and GRO on.
    fn default() -> IoConfig {
        IoConfig {
            send_queue: 4096,
            flush_bytes: 64 * 1024,
            recv_slots: 32,
            batch: true,
            gso: true,
            gro: true,
            force_buffers: false,
        }
    }
}

/// What the socket actually does (the kernel may refuse offloads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// `recvmmsg`/`sendmmsg` in use.
    pub batch: bool,
    /// Most datagrams per GSO message now (1: GSO off).
    pub gso_segments: usize,
    /// UDP GRO enabled on the socket.
    pub gro: bool,
}

/// Counters of the socket I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Datagrams handed to the kernel.
    pub datagrams_sent: u64,
    /// Octets handed to the kernel.
    pub bytes_sent: u64,
    /// Datagrams dropped because the kernel refused them.
    pub send_errors: u64,
    /// Send system calls that sent something.
    pub send_calls: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Octets received.
    pub bytes_received: u64,
    /// Receive system calls that returned something.
    pub recv_calls: u64,
    /// Received datagrams dropped (truncated, or an unknown source address family).
    pub recv_dropped: u64,
}

/// A datagram waiting to be sent: `head` then `body` (a data segment's header and its data, a
/// slice of the block, gathered by the socket without a copy; `body` is empty otherwise).
#[derive(Debug)]
struct Queued {
    addr: SocketAddr,
    head: Bytes,
    body: Bytes,
}

impl Queued {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

/// A UDP socket with a bounded send queue and a receive buffer pool.
pub struct UdpIo {
    socket: UdpSocket,
    local_addr: SocketAddr,
    buffers: (usize, usize),
    queue: VecDeque<Queued>,
    send_queue: usize,
    /// Octets in `queue`.
    queued_bytes: usize,
    flush_bytes: usize,
    /// Receive buffers (batched path: `recv_slots` of them; else one).
    pool: Vec<BytesMut>,
    arena: BytesMut,
    offload: Offload,
    /// GSO is not used for datagrams larger than this (lowered on EINVAL).
    gso_max_size: usize,
    counters: IoCounters,
}

impl UdpIo {
    /// Binds a UDP socket (made with `socket2`; SO_SNDBUF/SO_RCVBUF requested as given, the kernel
    /// may cap them) and sets up batching and offloads. Needs a tokio runtime.
    pub fn bind(
        bind: SocketAddr,
        send_buffer: usize,
        recv_buffer: usize,
        config: &IoConfig,
    ) -> io::Result<UdpIo> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
        let forced = |_name, _size| {
            #[cfg(target_os = "linux")]
            if config.force_buffers {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                let v = libc::c_int::try_from(_size).unwrap_or(libc::c_int::MAX);
                return linux::set_option(fd, libc::SOL_SOCKET, _name, v).is_ok();
            }
            false
        };
        #[cfg(target_os = "linux")]
        let (sndforce, rcvforce) = (libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE);
        #[cfg(not(target_os = "linux"))]
        let (sndforce, rcvforce) = (0, 0);
        if !forced(sndforce, send_buffer) {
            if let Err(e) = s.set_send_buffer_size(send_buffer) {
                warn!(error = %e, "cannot set SO_SNDBUF");
            }
        }
        if !forced(rcvforce, recv_buffer) {
            if let Err(e) = s.set_recv_buffer_size(recv_buffer) {
                warn!(error = %e, "cannot set SO_RCVBUF");
            }
        }
        let buffers = (
            s.send_buffer_size().unwrap_or(0),
            s.recv_buffer_size().unwrap_or(0),
        );
        if buffers.1 < recv_buffer {
            debug!(
                requested = recv_buffer,
                effective = buffers.1,
                "receive buffer capped by the kernel (net.core.rmem_max)"
            );
        }
        s.set_nonblocking(true)?;
        s.bind(&bind.into())?;
        let offload = setup_offload(&s, config);
        let socket = UdpSocket::from_std(s.into())?;
        let local_addr = socket.local_addr()?;
        let slots = if offload.batch {
            config.recv_slots.clamp(1, 1024)
        } else {
            1
        };
        debug!(?offload, slots, "UDP socket I/O");
        Ok(UdpIo {
            socket,
            local_addr,
            buffers,
            queue: VecDeque::new(),
            send_queue: config.send_queue.max(1),
            queued_bytes: 0,
            flush_bytes: config.flush_bytes.max(1),
            pool: (0..slots)
                .map(|_| BytesMut::with_capacity(MAX_DATAGRAM))
                .collect(),
            arena: BytesMut::new(),
            offload,
            gso_max_size: MAX_DATAGRAM,
            counters: IoCounters::default(),
        })
    }

    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Effective socket buffer sizes (send, receive) as the kernel reports them.
    pub fn socket_buffers(&self) -> (usize, usize) {
        self.buffers
    }

    /// Batching and offloads in use.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// Counters so far.
    pub fn counters(&self) -> IoCounters {
        self.counters
    }

    /// Datagrams waiting in the send queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The queue should be sent now: it is full, or holds [`IoConfig::flush_bytes`].
    pub fn batch_full(&self) -> bool {
        self.room() == 0 || self.queued_bytes >= self.flush_bytes
    }

    /// Room left in the send queue.
    pub fn room(&self) -> usize {
        self.send_queue.saturating_sub(self.queue.len())
    }

    /// Queues a datagram for `addr` (sent by [`flush`](Self::flush)). The caller keeps the bound
    /// by looking at [`room`](Self::room) first.
    pub fn push(&mut self, addr: SocketAddr, datagram: Bytes) {
        self.push_parts(addr, datagram, Bytes::new());
    }

    /// Queues a datagram made of `head` then `body`, sent without joining them (a gathered
    /// send) on the batched path; see [`push`](Self::push).
    pub fn push_parts(&mut self, addr: SocketAddr, head: Bytes, body: Bytes) {
        let q = Queued { addr, head, body };
        self.queued_bytes += q.len();
        self.queue.push_back(q);
    }

    /// Sends queued datagrams without waiting; true when the queue is empty, false when the
    /// socket buffer is full (wait for [`writable`](Self::writable), then flush again).
    pub fn flush(&mut self) -> bool {
        let empty = self.flush_queue();
        self.queued_bytes = if empty {
            0
        } else {
            self.queue.iter().map(Queued::len).sum()
        };
        empty
    }

    fn flush_queue(&mut self) -> bool {
        if self.queue.is_empty() {
            return true;
        }
        #[cfg(target_os = "linux")]
        if self.offload.batch {
            let UdpIo {
                socket,
                queue,
                offload,
                gso_max_size,
                counters,
                ..
            } = self;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&*socket);
            let r = socket.try_io(tokio::io::Interest::WRITABLE, || {
                linux::send_queued(fd, queue, offload, gso_max_size, counters)
            });
            return r.is_ok();
        }
        while let Some(q) = self.queue.front() {
            let joined;
            let d: &[u8] = if q.body.is_empty() {
                &q.head
            } else {
                joined = [&q.head[..], &q.body[..]].concat();
                &joined
            };
            let addr = &q.addr;
            match self.socket.try_send_to(d, *addr) {
                Ok(n) => {
                    self.counters.send_calls += 1;
                    self.counters.datagrams_sent += 1;
                    self.counters.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.counters.send_errors += 1;
                    debug!(error = %e, %addr, "UDP send error");
                }
            }
            self.queue.pop_front();
        }
        true
    }

    /// Waits until the socket may accept more datagrams.
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Waits until the socket may have datagrams to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Sends the whole queue, waiting for socket buffer space as needed.
    pub async fn flush_all(&mut self) -> io::Result<()> {
        while !self.flush() {
            self.writable().await?;
        }
        Ok(())
    }

    /// Reads the datagrams already queued on the socket, without waiting, into `out` (with
    /// their source addresses), until the socket is empty or at least `max` datagrams were read.
    /// Each receive call fills up to `recv_slots` buffers (and a buffer may hold up to 64
    /// datagrams under GRO), so `max = 1` means one system call. Returns how many were read
    /// (0: the socket is empty).
    pub fn try_recv(
        &mut self,
        out: &mut Vec<(Bytes, SocketAddr)>,
        max: usize,
    ) -> io::Result<usize> {
        let before = out.len();
        #[cfg(target_os = "linux")]
        if self.offload.batch {
            let UdpIo {
                socket,
                pool,
                arena,
                counters,
                ..
            } = self;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&*socket);
            let r = socket.try_io(tokio::io::Interest::READABLE, || {
                linux::recv_some(fd, pool, arena, out, before + max.max(1), counters)
            });
            return match r {
                Ok(()) => Ok(out.len() - before),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(out.len() - before),
                Err(e) if out.len() > before => {
                    debug!(error = %e, "UDP receive error");
                    Ok(out.len() - before)
                }
                Err(e) => Err(e),
            };
        }
        while out.len() - before < max.max(1) {
            if self.arena.capacity() < MAX_DATAGRAM {
                self.arena.reserve(RX_ARENA);
            }
            match self.socket.try_recv_buf_from(&mut self.arena) {
                Ok((n, from)) => {
                    self.counters.recv_calls += 1;
                    self.counters.datagrams_received += 1;
                    self.counters.bytes_received += n as u64;
                    out.push((self.arena.split_to(n).freeze(), from));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if out.len() > before => {
                    debug!(error = %e, "UDP receive error");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out.len() - before)
    }
}

#[cfg(not(target_os = "linux"))]
fn setup_offload(_s: &socket2::Socket, _config: &IoConfig) -> Offload {
    Offload {
        batch: false,
        gso_segments: 1,
        gro: false,
    }
}

#[cfg(target_os = "linux")]
fn setup_offload(s: &socket2::Socket, config: &IoConfig) -> Offload {
    use std::os::fd::AsRawFd;
    if !config.batch {
        return Offload {
            batch: false,
            gso_segments: 1,
            gro: false,
        };
    }
    let fd = s.as_raw_fd();
    let gro = config.gro && linux::set_udp_option(fd, libc::UDP_GRO, 1).is_ok();
    // GSO is requested per message (a UDP_SEGMENT control message); setting the socket option
    // once tells whether the kernel knows it. It is reset to 0 so that a datagram sent without
    // the control message is never cut.
    let gso = config.gso
        && linux::set_udp_option(fd, libc::UDP_SEGMENT, 1400).is_ok()
        && linux::set_udp_option(fd, libc::UDP_SEGMENT, 0).is_ok();
    Offload {
        batch: true,
        gso_segments: if gso { linux::GSO_MAX_SEGMENTS } else { 1 },
        gro,
    }
}

/// The Linux system calls. Each `unsafe` block passes the kernel pointers into buffers that
/// live (and are not moved) until the call returns; nothing keeps a pointer past the call.
#[cfg(target_os = "linux")]
mod linux {
    use std::collections::VecDeque;
    use std::io;
    use std::mem;
    use std::net::SocketAddr;
    use std::os::fd::RawFd;
    use std::ptr;

    use bytes::{Bytes, BytesMut};
    use tracing::{debug, info};

    use super::{IoCounters, Offload, Queued, MAX_DATAGRAM, RX_ARENA, ZERO_COPY_MIN};

    /// UDP_MAX_SEGMENTS of `include/linux/udp.h` (64 since GSO appeared in 4.18).
    pub(super) const GSO_MAX_SEGMENTS: usize = 64;
    /// Largest payload of one GSO message: a UDP datagram's limit over IPv4
    /// (65 535 − 20 − 8), also within IPv6's.
    const GSO_MAX_BYTES: usize = 65_507;
    /// Messages per `sendmmsg` call.
    const SEND_MSGS: usize = 64;

    /// Room for one control message of up to 8 octets (UDP_SEGMENT's u16, UDP_GRO's int),
    /// aligned like `cmsghdr`.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct Ctrl([u8; 64]);

    pub(super) fn set_udp_option(
        fd: RawFd,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        set_option(fd, libc::SOL_UDP, name, value)
    }

    pub(super) fn set_option(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: the option value is a c_int on our stack, its size passed with it.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// One planned message: `count` datagrams from the front of the queue (after the messages
    /// planned before it), `gso` the segment size if they go as one GSO message.
    struct Msg {
        count: usize,
        bytes: usize,
        gso: Option<u16>,
    }

    /// Groups the front of the queue into at most [`SEND_MSGS`] messages.
    fn plan(queue: &VecDeque<Queued>, gso_segments: usize, gso_max_size: usize) -> Vec<Msg> {
        let mut msgs = Vec::with_capacity(SEND_MSGS.min(queue.len()));
        let mut i = 0;
        while i < queue.len() && msgs.len() < SEND_MSGS {
            let addr = &queue[i].addr;
            let size = queue[i].len();
            let (mut count, mut bytes) = (1, size);
            if gso_segments > 1 && size > 0 && size <= gso_max_size {
                while count < gso_segments && i + count < queue.len() {
                    let (a, len) = (&queue[i + count].addr, queue[i + count].len());
                    if a != addr || len == 0 || len > size || bytes + len > GSO_MAX_BYTES {
                        break;
                    }
                    count += 1;
                    bytes += len;
                    if len < size {
                        break; // only the last datagram of a GSO message may be shorter
                    }
                }
            }
            msgs.push(Msg {
                count,
                bytes,
                gso: (count > 1).then_some(size as u16),
            });
            i += count;
        }
        msgs
    }

    /// Sends the queue with `sendmmsg`: Ok when empty, Err(WouldBlock) when the socket is full.
    pub(super) fn send_queued(
        fd: RawFd,
        queue: &mut VecDeque<Queued>,
        offload: &mut Offload,
        gso_max_size: &mut usize,
        counters: &mut IoCounters,
    ) -> io::Result<()> {
        while !queue.is_empty() {
            let msgs = plan(queue, offload.gso_segments, *gso_max_size);
            let datagrams: usize = msgs.iter().map(|m| m.count).sum();
            // One iovec per part (a header and its data are gathered into one datagram, and
            // a GSO message gathers all of its datagrams); `parts[k]`: message k's first iovec
            // and count.
            let iovec = |b: &Bytes| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            };
            let mut iovs: Vec<libc::iovec> = Vec::with_capacity(2 * datagrams);
            let mut parts: Vec<(usize, usize)> = Vec::with_capacity(msgs.len());
            let mut names: Vec<socket2::SockAddr> = Vec::with_capacity(msgs.len());
            let mut ctrls = vec![Ctrl([0; 64]); msgs.len()];
            let mut first = 0;
            for m in &msgs {
                names.push(socket2::SockAddr::from(queue[first].addr));
                let start = iovs.len();
                for q in queue.range(first..first + m.count) {
                    iovs.push(iovec(&q.head));
                    if !q.body.is_empty() {
                        iovs.push(iovec(&q.body));
                    }
                }
                parts.push((start, iovs.len() - start));
                first += m.count;
            }
            let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(msgs.len());
            for (k, m) in msgs.iter().enumerate() {
                // SAFETY: an all-zero mmsghdr is a valid empty message.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_name = names[k].as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = names[k].len();
                h.msg_hdr.msg_iov = iovs[parts[k].0..].as_mut_ptr();
                h.msg_hdr.msg_iovlen = parts[k].1 as _;
                if let Some(size) = m.gso {
                    // SAFETY: CMSG_SPACE(2) ≤ 64 octets of `ctrls[k]`, aligned for cmsghdr; the
                    // header and the u16 are written within that space.
                    unsafe {
                        h.msg_hdr.msg_control = ctrls[k].0.as_mut_ptr() as *mut libc::c_void;
                        h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = libc::UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                        ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, size);
                    }
                }
                hdrs.push(h);
            }
            // SAFETY: `hdrs` points into `names`, `iovs` and `ctrls`, and the iovecs into the
            // queued `Bytes`; all of them outlive the call and are not moved during it.
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as _, 0) };
            if r >= 0 {
                counters.send_calls += 1;
                for m in &msgs[..r as usize] {
                    counters.datagrams_sent += m.count as u64;
                    counters.bytes_sent += m.bytes as u64;
                    queue.drain(..m.count);
                }
                continue;
            }
            let e = io::Error::last_os_error();
            let m = &msgs[0];
            match (e.raw_os_error(), m.gso) {
                (Some(libc::EINTR), _) => {}
                (Some(libc::EAGAIN), _) => return Err(e),
                (Some(libc::EIO), Some(_)) => {
                    info!(error = %e, "UDP GSO refused; sending datagram by datagram");
                    offload.gso_segments = 1;
                }
                (Some(libc::EINVAL), Some(size)) => {
                    info!(
                        size,
                        "UDP GSO refused for datagrams this large (route MTU?)"
                    );
                    *gso_max_size = (size as usize).saturating_sub(1).min(*gso_max_size);
                }
                _ => {
                    counters.send_errors += m.count as u64;
                    debug!(error = %e, addr = %queue[0].addr, datagrams = m.count, "UDP send error");
                    queue.drain(..m.count);
                }
            }
        }
        Ok(())
    }

    /// Reads with `recvmmsg` into the pool until `out` holds `until` datagrams (Ok) or the
    /// socket is empty (Err(WouldBlock)).
    pub(super) fn recv_some(
        fd: RawFd,
        pool: &mut [BytesMut],
        arena: &mut BytesMut,
        out: &mut Vec<(Bytes, SocketAddr)>,
        until: usize,
        counters: &mut IoCounters,
    ) -> io::Result<()> {
        let n = pool.len();
        while out.len() < until {
            for b in pool.iter_mut() {
                if b.capacity() < MAX_DATAGRAM {
                    *b = BytesMut::with_capacity(MAX_DATAGRAM);
                }
                b.clear();
            }
            // SAFETY: all-zero sockaddr_storage and mmsghdr are valid (empty) values.
            let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { mem::zeroed() }; n];
            let mut ctrls = vec![Ctrl([0; 64]); n];
            let mut iovs: Vec<libc::iovec> = pool
                .iter_mut()
                .map(|b| libc::iovec {
                    // The kernel writes into the spare capacity; `set_len` below covers exactly
                    // the octets it reports written.
                    iov_base: b.spare_capacity_mut().as_mut_ptr() as *mut libc::c_void,
                    iov_len: MAX_DATAGRAM,
                })
                .collect();
            let mut hdrs: Vec<libc::mmsghdr> = (0..n)
                .map(|i| {
                    let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                    h.msg_hdr.msg_name = &mut names[i] as *mut _ as *mut libc::c_void;
                    h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
                    h.msg_hdr.msg_iov = &mut iovs[i];
                    h.msg_hdr.msg_iovlen = 1;
                    h.msg_hdr.msg_control = ctrls[i].0.as_mut_ptr() as *mut libc::c_void;
                    h.msg_hdr.msg_controllen = mem::size_of::<Ctrl>() as _;
                    h
                })
                .collect();
            // SAFETY: `hdrs` points into `names`, `ctrls`, `iovs`, and the iovecs into the
            // pool's spare capacity (MAX_DATAGRAM octets each); all outlive the call.
            let r = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), n as _, 0, ptr::null_mut()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            counters.recv_calls += 1;
            for (i, h) in hdrs.iter().enumerate().take(r as usize) {
                let len = h.msg_len as usize;
                let from = socket_addr(&names[i], h.msg_hdr.msg_namelen);
                let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                let (Some(from), false) = (from, truncated) else {
                    counters.recv_dropped += 1;
                    continue;
                };
                let stride = match gro_stride(&h.msg_hdr) {
                    Some(s) if s > 0 => s,
                    _ => len.max(1),
                };
                // SAFETY: the kernel wrote `len` ≤ MAX_DATAGRAM ≤ capacity octets at the
                // start of this buffer's (cleared) spare capacity.
                unsafe { pool[i].set_len(len) };
                let buf = if len >= ZERO_COPY_MIN {
                    mem::replace(&mut pool[i], BytesMut::with_capacity(MAX_DATAGRAM)).freeze()
                } else {
                    if arena.capacity() < len {
                        arena.reserve(RX_ARENA);
                    }
                    arena.extend_from_slice(&pool[i]);
                    arena.split().freeze()
                };
                counters.bytes_received += len as u64;
                if len == 0 {
                    counters.datagrams_received += 1;
                    out.push((buf, from));
                    continue;
                }
                let mut at = 0;
                while at < len {
                    let end = (at + stride).min(len);
                    out.push((buf.slice(at..end), from));
                    counters.datagrams_received += 1;
                    at = end;
                }
            }
        }
        Ok(())
    }

    /// The GRO segment size of a received message, if the kernel coalesced datagrams.
    fn gro_stride(h: &libc::msghdr) -> Option<usize> {
        // SAFETY: the control buffer was filled by the kernel; CMSG_FIRSTHDR/NXTHDR stay within
        // msg_controllen, and the int is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let v = ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    return usize::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    fn socket_addr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        // SAFETY: the kernel filled `len` octets of the storage with a socket address.
        unsafe { socket2::SockAddr::new(*s, len) }.as_socket()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn q(items: &[(u16, usize)]) -> VecDeque<Queued> {
            items
                .iter()
                .map(|&(port, len)| Queued {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    head: Bytes::from(vec![0u8; len.min(20)]),
                    body: Bytes::from(vec![0u8; len.saturating_sub(20)]),
                })
                .collect()
        }

        fn shape(m: &[Msg]) -> Vec<(usize, Option<u16>)> {
            m.iter().map(|m| (m.count, m.gso)).collect()
        }

        #[test]
        fn plan_groups_same_address_and_size_with_a_shorter_last() {
            let queue = q(&[
                (1, 100),
                (1, 100),
                (1, 40),
                (1, 100),
                (2, 100),
                (2, 100),
                (1, 200),
            ]);
            let m = plan(&queue, 64, MAX_DATAGRAM);
            assert_eq!(
                shape(&m),
                vec![(3, Some(100)), (1, None), (2, Some(100)), (1, None)]
            );
            assert_eq!(m[0].bytes, 240);
            // GSO off, or datagrams above the size limit: one message per datagram.
            assert_eq!(plan(&queue, 1, MAX_DATAGRAM).len(), 7);
            assert_eq!(plan(&queue, 64, 99).len(), 7);
        }

        #[test]
        fn plan_respects_the_segment_and_octet_limits() {
            let queue = q(&vec![(1, 1000); 200]);
            let m = plan(&queue, 64, MAX_DATAGRAM);
            assert!(m.iter().all(|m| m.count <= 64 && m.bytes <= GSO_MAX_BYTES));
            assert_eq!(m[0].count, 64);
            let big = q(&[(1, 30_000); 5]);
            assert_eq!(
                shape(&plan(&big, 64, MAX_DATAGRAM)),
                vec![(2, Some(30_000)), (2, Some(30_000)), (1, None)]
            );
            let many = q(&vec![(1, 10); 64 * 70]);
            assert_eq!(plan(&many, 1, MAX_DATAGRAM).len(), SEND_MSGS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn roundtrip(config: IoConfig) {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut a = UdpIo::bind(any, 1 << 20, 1 << 20, &config).unwrap();
        let mut b = UdpIo::bind(any, 1 << 20, 4 << 20, &config).unwrap();
        let to = b.local_addr();
        // Mixed sizes, a run of equal ones (one GSO message), a large one and an empty one; one
        // or two parts each.
        let mut sent = Vec::new();
        for i in 0..300u32 {
            let len = match i % 100 {
                0 => 0,
                1 => 60_000,
                2..=49 => 1400,
                50 => 700,
                _ => 1 + (i as usize * 37) % 2000,
            };
            let d: Bytes = (0..len)
                .map(|k| (k as u32 ^ i) as u8)
                .collect::<Vec<u8>>()
                .into();
            sent.push(d.clone());
            // Every other datagram goes as two parts (a header and its data), split anywhere.
            if i % 2 == 1 && len > 1 {
                let cut = 1 + (i as usize * 7) % (len - 1);
                a.push_parts(to, d.slice(..cut), d.slice(cut..));
            } else {
                a.push(to, d);
            }
        }
        a.flush_all().await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() {
            tokio::select! {
                r = b.readable() => r.unwrap(),
                _ = tokio::time::sleep_until(deadline) => break,
            }
            b.try_recv(&mut got, 1000).unwrap();
        }
        assert_eq!(got.len(), sent.len(), "offload {:?}", b.offload());
        for ((d, from), s) in got.iter().zip(&sent) {
            assert_eq!(d, s);
            assert_eq!(*from, a.local_addr());
        }
        let (ca, cb) = (a.counters(), b.counters());
        assert_eq!(ca.datagrams_sent, 300);
        assert_eq!(cb.datagrams_received, 300);
        assert_eq!(ca.bytes_sent, cb.bytes_received);
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn datagrams_arrive_intact_and_in_order_on_every_path() {
        roundtrip(IoConfig::default()).await;
        roundtrip(IoConfig {
            gso: false,
            gro: false,
            ..IoConfig::default()
        })
        .await;
        roundtrip(IoConfig {
            gro: false,
            ..IoConfig::default()
        })
        .await;
        roundtrip(IoConfig {
            batch: false,
            ..IoConfig::default()
        })
        .await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn linux_batches_and_offloads() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let io = UdpIo::bind(any, 1 << 20, 1 << 20, &IoConfig::default()).unwrap();
        assert!(io.offload().batch);
        // A forced buffer request is granted at least what the plain one is (more as root).
        let big = 32 << 20;
        let plain = UdpIo::bind(any, big, big, &IoConfig::default()).unwrap();
        let forced = IoConfig {
            force_buffers: true,
            ..IoConfig::default()
        };
        let forced = UdpIo::bind(any, big, big, &forced).unwrap();
        assert!(forced.socket_buffers().1 >= plain.socket_buffers().1);
        assert!(forced.socket_buffers().0 >= plain.socket_buffers().0);
        let off = UdpIo::bind(
            any,
            1 << 20,
            1 << 20,
            &IoConfig {
                batch: false,
                ..IoConfig::default()
            },
        )
        .unwrap();
        assert_eq!(
            off.offload(),
            Offload {
                batch: false,
                gso_segments: 1,
                gro: false
            }
        );
    }
}
