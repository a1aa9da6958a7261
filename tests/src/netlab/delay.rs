//! The delayer: one thread per receiving host that holds the packets arriving there from impaired
//! hosts and releases them when due, or drops them.
//!
//! Owns the timing and the loss decisions; not the netlink format (`nfqueue.rs`) nor the iptables
//! rules that send packets here (`mod.rs`).
//!
//! ```text
//!  sender i ─eth0─▶ switch ─▶ receiver j: PREROUTING -i eth0 -s addr(i) ──NFQUEUE i──▶ delayer of j
//!                                                                     (a thread entered into j's
//!        recv (queue i, id) ─▶ loss_i? ── yes ─▶ DROP verdict          namespace with setns)
//!                                │ no
//!                             due = now + delay_i ± U(jitter_i), at least now
//!                             min-heap by (due, arrival order)
//!   j's IP stack ◀──ACCEPT──  ppoll(queue fd, wake fd; until the next due time)
//! ```
//!
//! # Contract
//! * Packets are held on the receiver, after its IP layer took them over from the sending socket.
//!   Held on the sender (OUTPUT hook) they would still count against the socket's TCP Small
//!   Queues budget (~1 ms of data): bulk TCP under 10 ms of delay fell to 0.5 MB/s that way, and
//!   runs at 200 MB/s this way. netem orphans its packets for the same reason.
//! * Loss is decided here, per packet, by a seeded PRNG: silent to the sender, which handed the
//!   packet off long before. With loss > 0 the kernel segments GSO super-packets before queueing
//!   them, so loss is per wire packet; with loss = 0 they are held whole (fewer wake-ups).
//! * Jitter is uniform in [-jitter, +jitter] per packet, so packets can overtake each other, like
//!   netem's jitter.
//! * The thread sleeps in `ppoll()` until the next packet is due or one arrives: no spinning.
//! * Unbinding a sender's queue or stopping first releases its held packets (ACCEPT), because the
//!   kernel drops whatever is still queued when a queue is unbound.
//! * Each queue holds 65536 packets and fails open: past that, or if this thread dies, packets
//!   flow undelayed rather than vanish (the rules have `--queue-bypass`).
//!
//! Tests: `tests/tests/netlab.rs` (round trip under delay, UDP loss ratio, TCP bulk transfers).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::links::enter_netns;
use super::nfqueue::{NfQueue, F_FAIL_OPEN, F_GSO};
use super::Impairment;

const QUEUE_MAX_LEN: u32 = 65536;

/// A request to the thread: impair packets from queue `queue` (a sender) with `imp`, or stop
/// holding them (None); the outcome goes back on `done`.
struct Set {
    queue: u16,
    imp: Option<Impairment>,
    done: mpsc::SyncSender<anyhow::Result<()>>,
}

/// A running delayer thread; stop it with [`Delayer::stop`] (drop stops it too, quietly).
pub struct Delayer {
    requests: Option<mpsc::Sender<Set>>,
    waker: UnixStream,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Delayer {
    /// Starts a thread inside the namespace at `netns` and returns once its socket is open.
    /// `seed` fixes its jitter and loss draws.
    pub fn start(netns: PathBuf, seed: u64) -> anyhow::Result<Delayer> {
        let (waker, wake_rx) = UnixStream::pair().context("creating the delayer's wake pipe")?;
        waker.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let (requests, request_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let name = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name(format!("netlab-delay-{name}"))
            .spawn(move || {
                let opened = enter_netns(&netns).and_then(|()| {
                    NfQueue::open().with_context(|| format!("opening an NFQUEUE socket in {name}"))
                });
                match opened {
                    Ok(queue) => {
                        let _ = ready_tx.send(Ok(()));
                        run(queue, wake_rx, request_rx, seed)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        Ok(())
                    }
                }
            })
            .context("spawning a delayer thread")?;
        let mut delayer = Delayer {
            requests: Some(requests),
            waker,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(delayer),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let _ = delayer.stop_inner();
                Err(anyhow!(
                    "the delayer thread did not open its socket within 10 s"
                ))
            }
        }
    }

    /// Impairs what arrives on queue `queue` from now on (binding it first if new; held packets
    /// keep their due time), or with None releases its held packets and unbinds it. Returns once
    /// the thread did so, so a rule added afterwards never bypasses the queue.
    pub fn set(&self, queue: u16, imp: Option<Impairment>) -> anyhow::Result<()> {
        let (done, done_rx) = mpsc::sync_channel(1);
        let requests = self.requests.as_ref().context("the delayer is stopped")?;
        requests
            .send(Set { queue, imp, done })
            .map_err(|_| anyhow!("the delayer thread has ended"))?;
        self.wake();
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the delayer thread did not answer within 10 s"))?
    }

    /// Releases every held packet, closes the socket and returns the thread's error, if any.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // A closed request channel is the stop signal.
        self.requests = None;
        self.wake();
        thread
            .join()
            .map_err(|_| anyhow!("the delayer thread panicked"))?
    }

    fn wake(&self) {
        // A full pipe already holds a pending wake-up, so WouldBlock is fine.
        let _ = (&self.waker).write(&[1]);
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("netlab: delayer stopped with an error: {e:#}");
        }
    }
}

fn flags(imp: &Impairment) -> u32 {
    if imp.loss > 0.0 {
        F_FAIL_OPEN
    } else {
        F_FAIL_OPEN | F_GSO
    }
}

/// A held packet: due time, arrival order (equal due times keep FIFO order), queue, packet id.
type Held = Reverse<(Instant, u64, u16, u32)>;

/// The thread's state besides the socket.
struct State {
    imps: HashMap<u16, Impairment>,
    held: BinaryHeap<Held>,
    rng: SplitMix64,
    arrivals: u64,
}

impl State {
    /// Drops, holds or passes each packet of `ids` (draining it) arrived at `now`.
    fn admit(
        &mut self,
        ids: &mut Vec<(u16, u32)>,
        now: Instant,
        verdicts: &mut Vec<(u16, u32, bool)>,
    ) {
        for (num, id) in ids.drain(..) {
            // A packet of a queue unbound meanwhile: let it go.
            let Some(imp) = self.imps.get(&num).copied() else {
                verdicts.push((num, id, true));
                continue;
            };
            if imp.loss > 0.0 && self.rng.unit() < imp.loss {
                verdicts.push((num, id, false));
                continue;
            }
            let offset = (self.rng.unit() * 2.0 - 1.0) * imp.jitter.as_secs_f64();
            let wait = (imp.delay.as_secs_f64() + offset).max(0.0);
            if wait == 0.0 {
                verdicts.push((num, id, true));
            } else {
                self.arrivals += 1;
                let due = now + Duration::from_secs_f64(wait);
                self.held.push(Reverse((due, self.arrivals, num, id)));
            }
        }
    }
}

fn run(
    mut queue: NfQueue,
    mut wake_rx: UnixStream,
    requests: mpsc::Receiver<Set>,
    seed: u64,
) -> anyhow::Result<()> {
    let mut st = State {
        imps: HashMap::new(),
        held: BinaryHeap::new(),
        rng: SplitMix64(seed),
        arrivals: 0,
    };
    let mut ids = Vec::new();
    let mut verdicts = Vec::new();
    let result = loop {
        let stop = loop {
            match requests.try_recv() {
                Ok(set) => {
                    let outcome = apply(&mut queue, &mut st, set.queue, set.imp);
                    let _ = set.done.send(outcome);
                }
                Err(mpsc::TryRecvError::Empty) => break false,
                Err(mpsc::TryRecvError::Disconnected) => break true,
            }
        };
        if stop {
            break Ok(());
        }
        let now = Instant::now();
        let timeout = st
            .held
            .peek()
            .map(|Reverse((due, ..))| due.saturating_duration_since(now));
        if let Err(e) = poll_fds(&[queue.as_raw_fd(), wake_rx.as_raw_fd()], timeout) {
            break Err(e).context("ppoll on the queue");
        }
        let mut sink = [0u8; 64];
        while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
        if let Err(e) = queue.read_packets(&mut ids) {
            break Err(e).context("reading the queue");
        }
        let now = Instant::now();
        st.admit(&mut ids, now, &mut verdicts);
        while let Some(&Reverse((due, _, num, id))) = st.held.peek() {
            if due > now {
                break;
            }
            st.held.pop();
            verdicts.push((num, id, true));
        }
        if let Err(e) = queue.verdicts(&verdicts) {
            break Err(e).context("sending verdicts");
        }
        verdicts.clear();
    };
    // Held packets would be dropped by the kernel when the socket closes; let them go instead.
    let rest: Vec<(u16, u32, bool)> = st
        .held
        .drain()
        .map(|Reverse((_, _, num, id))| (num, id, true))
        .collect();
    let released = queue.verdicts(&rest).context("releasing held packets");
    result.and(released)
}

/// Binds, re-configures or (releasing its packets first) unbinds queue `num`.
fn apply(
    queue: &mut NfQueue,
    st: &mut State,
    num: u16,
    imp: Option<Impairment>,
) -> anyhow::Result<()> {
    match (st.imps.get(&num).copied(), imp) {
        (None, Some(new)) => {
            queue
                .bind(num, QUEUE_MAX_LEN, flags(&new))
                .with_context(|| format!("binding NFQUEUE {num}"))?;
            st.imps.insert(num, new);
        }
        (Some(old), Some(new)) => {
            if flags(&old) != flags(&new) {
                queue
                    .set_flags(num, flags(&new))
                    .with_context(|| format!("changing the flags of NFQUEUE {num}"))?;
            }
            st.imps.insert(num, new);
        }
        (Some(_), None) => {
            // Packets already waiting in the socket would be dropped by the unbind: take them in
            // first (the caller removed the rule, so no more arrive for `num`).
            let mut ids = Vec::new();
            let mut rest = Vec::new();
            queue.read_packets(&mut ids).context("reading the queue")?;
            st.admit(&mut ids, Instant::now(), &mut rest);
            st.imps.remove(&num);
            st.held.retain(|&Reverse((_, _, n, id))| {
                if n == num {
                    rest.push((n, id, true));
                }
                n != num
            });
            queue.verdicts(&rest).context("releasing held packets")?;
            queue
                .unbind(num)
                .with_context(|| format!("unbinding NFQUEUE {num}"))?;
        }
        (None, None) => {}
    }
    Ok(())
}

/// ppoll(2) for readability of `fds`, up to `timeout` (None: no limit). EINTR counts as a wake-up.
pub fn poll_fds(fds: &[RawFd], timeout: Option<Duration>) -> std::io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` and `ts` outlive the call; the count matches `pfds`; a null timeout means
    // wait without limit and a null sigmask keeps the thread's mask.
    let rc = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, seedable, good enough for jitter and loss draws.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn splitmix_is_seeded_and_uniform_enough() {
        let draws: Vec<f64> = {
            let mut r = SplitMix64(7);
            (0..10_000).map(|_| r.unit()).collect()
        };
        let again: Vec<f64> = {
            let mut r = SplitMix64(7);
            (0..10_000).map(|_| r.unit()).collect()
        };
        assert_eq!(draws, again);
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = draws.iter().filter(|&&x| x < 0.5).count();
        assert!((4_800..5_200).contains(&below_half), "{below_half}");
    }
}
