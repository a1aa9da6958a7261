//! The delayer: one thread per impaired host that holds that host's outgoing packets and releases
//! them when due, or drops them.
//!
//! Owns the timing and the loss decisions; not the netlink format (`nfqueue.rs`) nor the iptables
//! rule that sends packets here (`mod.rs`).
//!
//! ```text
//!  host namespace                                   delayer thread (this file, entered into the
//!  app ──send──▶ OUTPUT -o eth0 ──NFQUEUE 0──▶      host's namespace with setns)
//!                                │                    recv id ─▶ loss? ── yes ─▶ DROP verdict
//!                                │                       │ no
//!                                │                    due = now + delay ± U(jitter), min now
//!                                │                    min-heap by (due, arrival order)
//!                                ◀──ACCEPT verdict─── ppoll(queue fd, wake fd; until next due)
//!                        eth0 ──▶ switch
//! ```
//!
//! # Contract
//! * Loss is decided here, per packet, by a seeded PRNG: a DROP verdict on a packet already
//!   queued is silent to the sender, whereas an iptables DROP on OUTPUT fails `sendto()` with
//!   EPERM and makes TCP retry at once rather than see a loss.
//! * With loss > 0 the kernel segments GSO super-packets before queueing them, so loss is per wire
//!   packet; with loss = 0 super-packets are held whole (far fewer wake-ups, same timing).
//! * Jitter is uniform in [-jitter, +jitter] per packet, so packets can overtake each other, like
//!   netem's jitter.
//! * The thread sleeps in `ppoll()` until the next packet is due or one arrives: no spinning.
//! * Stopping releases every held packet (ACCEPT) before the socket closes, because the kernel
//!   drops whatever is still queued when a queue is unbound.
//! * The queue holds 65536 packets and fails open: past that, or if this thread dies, packets
//!   flow undelayed rather than vanish (the rule has `--queue-bypass`).
//!
//! Tests: `tests/tests/netlab.rs` (round trip under delay, UDP loss ratio, TCP bulk transfer).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::links::enter_netns;
use super::nfqueue::{NfQueue, F_FAIL_OPEN, F_GSO};
use super::Impairment;

/// The queue number the host's iptables rule sends packets to (queues are per namespace).
pub const QUEUE_NUM: u16 = 0;
const QUEUE_MAX_LEN: u32 = 65536;

struct Shared {
    imp: Mutex<Impairment>,
    stop: AtomicBool,
}

/// A running delayer thread; stop it with [`Delayer::stop`] (drop stops it too, quietly).
pub struct Delayer {
    shared: Arc<Shared>,
    waker: UnixStream,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Delayer {
    /// Starts a thread inside the namespace at `netns` and returns once its queue is bound
    /// (so a rule added afterwards never bypasses it). `seed` fixes its jitter and loss draws.
    pub fn start(netns: PathBuf, imp: Impairment, seed: u64) -> anyhow::Result<Delayer> {
        let (waker, wake_rx) = UnixStream::pair().context("creating the delayer's wake pipe")?;
        waker.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            imp: Mutex::new(imp),
            stop: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let name = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("netlab-delay-{name}"))
            .spawn(move || {
                let bound = enter_netns(&netns).and_then(|()| {
                    NfQueue::bind(QUEUE_NUM, QUEUE_MAX_LEN, flags(&imp))
                        .with_context(|| format!("binding NFQUEUE {QUEUE_NUM} in {name}"))
                });
                match bound {
                    Ok(queue) => {
                        let _ = ready_tx.send(Ok(()));
                        run(queue, wake_rx, &thread_shared, seed)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        Ok(())
                    }
                }
            })
            .context("spawning a delayer thread")?;
        let mut delayer = Delayer {
            shared,
            waker,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(delayer),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let _ = delayer.stop_inner();
                Err(anyhow!(
                    "the delayer thread did not bind its queue within 10 s"
                ))
            }
        }
    }

    /// Applies `imp` to packets arriving from now on (held ones keep their due time).
    pub fn set(&self, imp: Impairment) {
        *self.shared.imp.lock().unwrap_or_else(|p| p.into_inner()) = imp;
        self.wake();
    }

    /// Releases every held packet, closes the queue and returns the thread's error, if any.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::SeqCst);
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

/// A held packet: due time, then arrival order so equal due times keep FIFO order.
type Held = Reverse<(Instant, u64, u32)>;

fn run(
    mut queue: NfQueue,
    mut wake_rx: UnixStream,
    shared: &Shared,
    seed: u64,
) -> anyhow::Result<()> {
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut rng = SplitMix64(seed);
    let mut arrivals = 0u64;
    let mut ids = Vec::new();
    let mut verdicts = Vec::new();
    let mut current_flags = flags(&shared.imp.lock().unwrap_or_else(|p| p.into_inner()));
    let result = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let imp = *shared.imp.lock().unwrap_or_else(|p| p.into_inner());
        if flags(&imp) != current_flags {
            current_flags = flags(&imp);
            if let Err(e) = queue.set_flags(current_flags) {
                break Err(e).context("changing the queue's flags");
            }
        }
        let now = Instant::now();
        let timeout = held
            .peek()
            .map(|Reverse((due, _, _))| due.saturating_duration_since(now));
        if let Err(e) = poll_fds(&[queue.as_raw_fd(), wake_rx.as_raw_fd()], timeout) {
            break Err(e).context("ppoll on the queue");
        }
        let mut sink = [0u8; 64];
        while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
        if let Err(e) = queue.read_packets(&mut ids) {
            break Err(e).context("reading the queue");
        }
        let now = Instant::now();
        for id in ids.drain(..) {
            if imp.loss > 0.0 && rng.unit() < imp.loss {
                verdicts.push((id, false));
                continue;
            }
            let offset = (rng.unit() * 2.0 - 1.0) * imp.jitter.as_secs_f64();
            let wait = (imp.delay.as_secs_f64() + offset).max(0.0);
            if wait == 0.0 {
                verdicts.push((id, true));
            } else {
                arrivals += 1;
                held.push(Reverse((now + Duration::from_secs_f64(wait), arrivals, id)));
            }
        }
        while let Some(&Reverse((due, _, id))) = held.peek() {
            if due > now {
                break;
            }
            held.pop();
            verdicts.push((id, true));
        }
        if let Err(e) = queue.verdicts(&verdicts) {
            break Err(e).context("sending verdicts");
        }
        verdicts.clear();
    };
    // Held packets would be dropped by the kernel when the socket closes; let them go instead.
    let rest: Vec<(u32, bool)> = held.drain().map(|Reverse((_, _, id))| (id, true)).collect();
    let released = queue.verdicts(&rest).context("releasing held packets");
    result.and(released)
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
