//! Network lab: runs test processes on separate "hosts" (Linux network namespaces) joined by a
//! virtual switch, with per-host delay, jitter, loss and silent partitions.
//!
//! Owns the lab's topology and its lifetime; the plumbing (commands, namespace names, killing) is
//! in `links.rs`, the packet timing in `delay.rs` over the netlink client in `nfqueue.rs`.
//!
//! ```text
//!   rtlab<pid>-<n>-<tag>-h0        rtlab<pid>-<n>-<tag>-h1        ... -hN-1  (host namespaces)
//!   lo 127.0.0.1                   lo 127.0.0.1
//!   eth0 198.18.0.10/24            eth0 198.18.0.11/24                      198.18.0.(10+i)
//!    │  PREROUTING -i eth0 -s <impaired host> → NFQUEUE <its index> (delay.rs)
//!    │ veth                          │ veth
//!  ┌─┴───────────────────────────────┴──────────────────────────┐
//!  │ h0                             h1              ...  hN-1   │  rtlab<pid>-<n>-<tag>-sw
//!  │ └──────────────── br0 (bridge, no IP) ─────────────────┘   │  (the switch namespace)
//!  └────────────────────────────────────────────────────────────┘
//! ```
//!
//! # Contract
//! * The root network namespace is never touched: the bridge lives in the lab's switch namespace,
//!   each veth pair is created with one end there and the other (`eth0`) in its host.
//! * Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking only); each lab is its own L2
//!   segment, so labs may reuse them. Neighbour (ARP) entries are static, so a partition never
//!   turns into a quick "host unreachable": packets just vanish.
//! * `impair` affects only what host i sends on `eth0` (loopback is untouched): delay ± uniform
//!   jitter and per-packet loss, done by threads of this process (the kernel here has no netem).
//!   They hold the packets where they arrive, in every other host, not where they leave: see
//!   `delay.rs` for why (TCP Small Queues). A lab of one host has no link to impair.
//! * `link_down` disables host i's switch port: frames both ways are dropped in the switch, no
//!   RST, no ICMP, and the host keeps its carrier (taking the veth down would show NO-CARRIER).
//! * Drop kills every process inside the lab's namespaces, stops the delayers and deletes the
//!   namespaces, also when the test panicked. `Lab::new` first deletes namespaces left by test
//!   processes that no longer exist.
//! * A lab that cannot be built is an error naming the failed command, never a skip.
//!
//! Concurrency: `Lab` is `Sync`; labs in one process or in parallel processes never share names.
//!
//! Tests: `tests/tests/netlab.rs` (root needed; run `scripts/setup-netlab.sh` once).

mod delay;
mod links;
mod nfqueue;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};

pub use links::check_available;

use delay::Delayer;
use links::{ip_batch, ip_cmd, iptables_in, netns_path, PREFIX};

/// Most hosts in one lab (addresses 198.18.0.10 ..).
pub const MAX_HOSTS: usize = 64;

/// What happens to every packet a host sends over its link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added to every packet.
    pub delay: Duration,
    /// Each packet's delay is `delay + U(-jitter, +jitter)`, at least 0; packets may reorder.
    pub jitter: Duration,
    /// Probability in [0, 1] that a packet is dropped (silently, after the sender handed it off).
    pub loss: f64,
}

impl Impairment {
    fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.loss) {
            bail!("loss {} is not a probability in [0, 1]", self.loss);
        }
        if self.delay + self.jitter > Duration::from_secs(60) {
            bail!(
                "delay {:?} + jitter {:?} exceeds 60 s",
                self.delay,
                self.jitter
            );
        }
        Ok(())
    }
}

/// One isolated L2 network: a switch namespace with a bridge, and `hosts` host namespaces.
pub struct Lab {
    switch: String,
    hosts: Vec<String>,
    impairments: Mutex<Impairments>,
}

/// Who is impaired, and the delayers that do it.
struct Impairments {
    /// Per sending host: its impairment.
    of: Vec<Option<Impairment>>,
    /// Per receiving host: its delayer, while any other host is impaired.
    delayers: Vec<Option<Delayer>>,
}

impl Lab {
    /// Builds a lab of `hosts` hosts; `tag` (letters and digits are kept, up to 8) shows in the
    /// namespace names, to tell which test a namespace belongs to.
    pub fn new(tag: &str, hosts: usize) -> anyhow::Result<Lab> {
        check_available()?;
        if hosts == 0 || hosts > MAX_HOSTS {
            bail!("a lab has 1..={MAX_HOSTS} hosts, not {hosts}");
        }
        links::remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(1); // 0 is check_available's probe
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect::<String>()
            .to_ascii_lowercase();
        let base = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        let lab = Lab {
            switch: format!("{base}-sw"),
            hosts: (0..hosts).map(|i| format!("{base}-h{i}")).collect(),
            impairments: Mutex::new(Impairments {
                of: vec![None; hosts],
                delayers: (0..hosts).map(|_| None).collect(),
            }),
        };
        // On error `lab` drops here and deletes whatever was created.
        lab.build()
            .with_context(|| format!("building network lab {base}"))?;
        Ok(lab)
    }

    fn build(&self) -> anyhow::Result<()> {
        for ns in std::iter::once(&self.switch).chain(&self.hosts) {
            ip_cmd(&format!("netns add {ns}"))?;
        }
        // Switch side. addrgenmode none: no IPv6 link-local chatter on the segment.
        let mut sw = String::from(
            "link add br0 type bridge\nlink set br0 addrgenmode none\nlink set br0 up\n",
        );
        for (i, host) in self.hosts.iter().enumerate() {
            sw += &format!(
                "link add h{i} type veth peer name eth0 address {} netns {host}\n\
                 link set h{i} addrgenmode none\nlink set h{i} master br0\nlink set h{i} up\n",
                mac(i)
            );
        }
        ip_batch(&self.switch, &sw)?;
        for (i, host) in self.hosts.iter().enumerate() {
            let mut script = format!(
                "link set lo up\nlink set eth0 addrgenmode none\n\
                 addr add {}/24 dev eth0\nlink set eth0 up\n",
                self.addr(i)
            );
            for j in (0..self.hosts.len()).filter(|&j| j != i) {
                script += &format!(
                    "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                    self.addr(j),
                    mac(j)
                );
            }
            ip_batch(host, &script)?;
        }
        Ok(())
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Host `host`'s address on the lab network: 198.18.0.(10 + host).
    pub fn addr(&self, host: usize) -> Ipv4Addr {
        assert!(host < MAX_HOSTS, "host {host} out of range");
        Ipv4Addr::new(198, 18, 0, 10 + host as u8)
    }

    /// Name of host `host`'s network namespace (for `ip netns exec`).
    pub fn netns(&self, host: usize) -> &str {
        &self.hosts[host]
    }

    /// Name of the switch namespace (holding `br0` and the ports `h0`, `h1`, ...).
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// `ip netns exec NS program`: runs `program` in host `host`'s namespace. `ip` execs it, so
    /// the child's pid is the program's own (signals such as SIGSTOP reach it directly).
    pub fn command(&self, host: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(links::ip());
        cmd.args(["netns", "exec", self.netns(host)]).arg(program);
        cmd
    }

    /// Runs `f` on a thread inside host `host`'s namespace and returns its result. Sockets made
    /// there stay in that namespace wherever they are used later, so tests can open listeners
    /// and connections of any host from the test's own threads. A panic in `f` is re-raised.
    pub fn in_host<T: Send>(&self, host: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = netns_path(self.netns(host));
        std::thread::scope(|s| {
            let thread = s.spawn(|| links::enter_netns(&path).map(|()| f()));
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Delays (± jitter) and drops what host `host` sends over its link, from now on; replaces a
    /// previous impairment of that host.
    pub fn impair(&self, host: usize, imp: Impairment) -> anyhow::Result<()> {
        imp.validate()?;
        assert!(host < self.hosts(), "host {host} out of range");
        let mut state = self.lock_impairments();
        let new = state.of[host].is_none();
        state.of[host] = Some(imp);
        for rx in (0..self.hosts()).filter(|&rx| rx != host) {
            let delayer = match &mut state.delayers[rx] {
                Some(d) => d,
                slot => {
                    // Seeded per receiver: the same test draws the same jitter and losses.
                    let seed = 0x6e65_746c_6162_0000 ^ rx as u64;
                    slot.insert(Delayer::start(netns_path(self.netns(rx)), seed)?)
                }
            };
            delayer.set(host as u16, Some(imp))?;
            if new {
                // After the bind, so no packet bypasses the delay.
                iptables_in(self.netns(rx), &self.nfqueue_rule("-A", host))?;
            }
        }
        Ok(())
    }

    /// [`Lab::impair`] on every host.
    pub fn impair_all(&self, imp: Impairment) -> anyhow::Result<()> {
        (0..self.hosts()).try_for_each(|h| self.impair(h, imp))
    }

    /// Ends host `host`'s impairment: held packets are released at once. No-op when unimpaired.
    pub fn clear_impairment(&self, host: usize) -> anyhow::Result<()> {
        let mut state = self.lock_impairments();
        if state.of[host].take().is_none() {
            return Ok(());
        }
        let mut first_error = Ok(());
        for rx in (0..self.hosts()).filter(|&rx| rx != host) {
            // Rule first, so nothing is queued after the delayer's final release.
            let rule = iptables_in(self.netns(rx), &self.nfqueue_rule("-D", host));
            let released = match &state.delayers[rx] {
                Some(d) => d.set(host as u16, None),
                None => Ok(()),
            };
            let still_needed = (0..self.hosts()).any(|h| h != rx && state.of[h].is_some());
            let stopped = match state.delayers[rx].take_if(|_| !still_needed) {
                Some(d) => d.stop(),
                None => Ok(()),
            };
            first_error = first_error.and(rule).and(released).and(stopped);
        }
        first_error
    }

    /// Partitions host `host`: its switch port drops every frame both ways, silently.
    pub fn link_down(&self, host: usize) -> anyhow::Result<()> {
        self.port_state(host, 0) // BR_STATE_DISABLED
    }

    /// Heals [`Lab::link_down`].
    pub fn link_up(&self, host: usize) -> anyhow::Result<()> {
        self.port_state(host, 3) // BR_STATE_FORWARDING
    }

    fn port_state(&self, host: usize, state: u8) -> anyhow::Result<()> {
        assert!(host < self.hosts(), "host {host} out of range");
        // Not `ip link set .. type bridge_slave state N`: iproute2 6.1 accepts it and changes
        // nothing.
        links::bridge_cmd(&self.switch, &format!("link set dev h{host} state {state}"))
    }

    fn lock_impairments(&self) -> std::sync::MutexGuard<'_, Impairments> {
        // A panic elsewhere while holding the lock leaves the vectors themselves consistent.
        self.impairments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rule, in receiver namespaces, that sends what `from` sends to the delayer's queue
    /// `from`; `--queue-bypass` lets packets through when no delayer is bound. In `mangle`
    /// PREROUTING: after the IP layer took the packet over from the sending socket.
    fn nfqueue_rule(&self, op: &str, from: usize) -> String {
        format!(
            "-t mangle {op} PREROUTING -i eth0 -s {} -j NFQUEUE --queue-num {from} --queue-bypass",
            self.addr(from)
        )
    }

    /// Every namespace of the lab, switch first.
    pub fn all_netns(&self) -> Vec<String> {
        std::iter::once(self.switch.clone())
            .chain(self.hosts.iter().cloned())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first, so nothing sends while the delayers release what they hold.
        for ns in self.all_netns() {
            if let Err(e) = links::kill_all_in(&netns_path(&ns)) {
                eprintln!("netlab: {e:#}");
            }
        }
        for d in self
            .lock_impairments()
            .delayers
            .iter_mut()
            .filter_map(Option::take)
        {
            if let Err(e) = d.stop() {
                eprintln!("netlab: {e:#}");
            }
        }
        for ns in self.all_netns() {
            if let Err(e) = links::delete_netns(&ns) {
                eprintln!("netlab: deleting {ns}: {e:#}");
            }
        }
    }
}

/// Locally administered MAC of host i's eth0 (02:72:74 = "rt").
fn mac(host: usize) -> String {
    format!("02:72:74:00:{:02x}:{:02x}", host >> 8, host & 0xff)
}
