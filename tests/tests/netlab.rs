//! Self-tests of the network lab (`ringtrain_tests::netlab`): reachability, delay, loss,
//! partitions and clean-up, each on its own lab. They need root (run `scripts/setup-netlab.sh`
//! once); when a lab cannot be built they fail, never skip.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use ringtrain_tests::netlab::{Impairment, Lab};

/// A listener on host `host`'s lab address, any port.
fn listen(lab: &Lab, host: usize) -> anyhow::Result<TcpListener> {
    let addr = lab.addr(host);
    lab.in_host(host, move || TcpListener::bind((addr, 0)))?
        .context("binding a listener")
}

/// A connection from host `from` to `to`, giving up after `timeout`.
fn connect(
    lab: &Lab,
    from: usize,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    lab.in_host(from, move || TcpStream::connect_timeout(&to, timeout))
        .map_err(std::io::Error::other)?
}

/// Serves one connection: echoes everything until the peer closes.
fn echo_once(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    })
}

/// Sorted round trips of `n` one-byte pings over `s`.
fn round_trips(s: &mut TcpStream, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut rtts = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"p")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    Ok(rtts)
}

#[test]
fn hosts_reach_each_other_over_tcp_and_commands_run_inside_hosts() -> anyhow::Result<()> {
    let lab = Lab::new("reach", 2)?;
    let listener = listen(&lab, 1)?;
    let server_addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<(SocketAddr, Vec<u8>)> {
        let (mut s, peer) = listener.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok((peer, got))
    });
    let mut c = connect(&lab, 0, server_addr, Duration::from_secs(5))?;
    c.write_all(b"hello over the lab")?;
    c.shutdown(Shutdown::Write)?;
    let (peer, got) = server.join().expect("server thread")?;
    assert_eq!(peer.ip(), lab.addr(0));
    assert_eq!(got, b"hello over the lab");

    // A child process sees its host's interface (ip netns exec also remounts /sys).
    let out = lab
        .command(1, "cat")
        .arg("/sys/class/net/eth0/address")
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "02:72:74:00:00:01"
    );
    Ok(())
}

#[test]
fn delay_and_jitter_slow_round_trips_and_clearing_restores_them() -> anyhow::Result<()> {
    let lab = Lab::new("delay", 2)?;
    let listener = listen(&lab, 1)?;
    let server = echo_once(listener.try_clone()?);
    let mut c = connect(&lab, 0, listener.local_addr()?, Duration::from_secs(5))?;
    c.set_nodelay(true)?;
    let base = round_trips(&mut c, 20)?;

    let imp = Impairment {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        loss: 0.0,
    };
    lab.impair_all(imp)?;
    let slow = round_trips(&mut c, 20)?;
    lab.clear_impairment(0)?;
    lab.clear_impairment(1)?;
    let after = round_trips(&mut c, 20)?;
    eprintln!(
        "rtt min/median/max: before {:?}/{:?}/{:?}, 20±5 ms each way {:?}/{:?}/{:?}, cleared {:?}/{:?}/{:?}",
        base[0], base[10], base[19], slow[0], slow[10], slow[19], after[0], after[10], after[19]
    );
    // Each direction waits 15..25 ms.
    assert!(slow[0] >= Duration::from_millis(29), "min {:?}", slow[0]);
    assert!(
        slow[10] >= Duration::from_millis(35),
        "median {:?}",
        slow[10]
    );
    assert!(
        after[10] < Duration::from_millis(5),
        "median {:?}",
        after[10]
    );
    drop(c);
    server.join().expect("echo thread");
    Ok(())
}

#[test]
fn loss_drops_about_the_given_share_silently_and_one_way() -> anyhow::Result<()> {
    let lab = Lab::new("loss", 2)?;
    let bad = Impairment {
        loss: 1.5,
        ..Impairment::default()
    };
    assert!(lab.impair(0, bad).is_err(), "loss 1.5 must be refused");
    lab.impair(
        0,
        Impairment {
            loss: 0.5,
            ..Impairment::default()
        },
    )?;
    let (a0, a1) = (lab.addr(0), lab.addr(1));
    let rx1 = lab.in_host(1, move || UdpSocket::bind((a1, 0)))??;
    let rx0 = lab.in_host(0, move || UdpSocket::bind((a0, 0)))??;
    let tx0 = lab.in_host(0, move || UdpSocket::bind((a0, 0)))??;
    let tx1 = lab.in_host(1, move || UdpSocket::bind((a1, 0)))??;
    for i in 0..200u32 {
        // Every send succeeds: the loss happens after the datagram left the socket.
        tx0.send_to(&i.to_be_bytes(), rx1.local_addr()?)?;
        tx1.send_to(&i.to_be_bytes(), rx0.local_addr()?)?;
        std::thread::sleep(Duration::from_micros(200));
    }
    let count = |rx: &UdpSocket| -> anyhow::Result<usize> {
        rx.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut n = 0;
        let mut buf = [0u8; 16];
        loop {
            match rx.recv(&mut buf) {
                Ok(_) => n += 1,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(n)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let (from0, from1) = (count(&rx1)?, count(&rx0)?);
    eprintln!("loss 0.5 on host 0: {from0}/200 arrived from it, {from1}/200 from host 1");
    assert!((60..=140).contains(&from0), "{from0} of 200 arrived");
    assert_eq!(from1, 200, "host 1 is not impaired");
    Ok(())
}

/// Sends `len` patterned bytes from host 0 to host 1 over TCP; checks they arrive intact and
/// returns how long it took from connecting to the receiver's end of stream.
fn transfer(lab: &Lab, len: u32) -> anyhow::Result<Duration> {
    let listener = listen(lab, 1)?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 977) as u8).collect();
    let t = Instant::now();
    let mut c = connect(lab, 0, addr, Duration::from_secs(5))?;
    c.write_all(&data)?;
    c.shutdown(Shutdown::Write)?;
    let got = server.join().expect("server thread")?;
    let took = t.elapsed();
    assert!(
        got == data,
        "payload differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
    Ok(took)
}

#[test]
fn tcp_bulk_transfer_survives_delay_jitter_and_loss() -> anyhow::Result<()> {
    let lab = Lab::new("bulk", 2)?;
    lab.impair_all(Impairment {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(2),
        loss: 0.01,
    })?;
    let took = transfer(&lab, 2_000_000)?;
    eprintln!(
        "2 MB over 5±2 ms, 1% loss each way: {took:?} ({:.1} MB/s)",
        2.0 / took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    Ok(())
}

#[test]
fn ten_ms_of_delay_leaves_bulk_tcp_fast() -> anyhow::Result<()> {
    // Packets held where they leave (the sender's OUTPUT hook) stay charged to the sending
    // socket's TCP Small Queues budget: 10 ms of delay cut bulk TCP to 0.5 MB/s that way.
    let lab = Lab::new("fast", 2)?;
    lab.impair_all(Impairment {
        delay: Duration::from_millis(10),
        ..Impairment::default()
    })?;
    let took = transfer(&lab, 20_000_000)?;
    eprintln!(
        "20 MB over 10 ms each way: {took:?} ({:.1} MB/s)",
        20.0 / took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "{took:?}: under 2 MB/s");
    Ok(())
}

#[test]
fn link_down_is_a_silent_partition_and_link_up_heals_it() -> anyhow::Result<()> {
    let lab = Lab::new("part", 2)?;
    let listener = listen(&lab, 1)?;
    let addr = listener.local_addr()?;
    let early = connect(&lab, 0, addr, Duration::from_secs(5))?;
    let (mut accepted, _) = listener.accept()?;

    lab.link_down(1)?;
    // No RST, no ICMP, no local error: the attempt just times out.
    let err =
        connect(&lab, 0, addr, Duration::from_secs(1)).expect_err("connected across a partition");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    // Writes on an established connection and datagrams from the cut-off host succeed locally.
    (&early).write_all(b"sent during the partition")?;
    let a1 = lab.addr(1);
    let udp = lab.in_host(1, move || UdpSocket::bind((a1, 0)))??;
    udp.send_to(b"x", (lab.addr(0), 9))?;
    // ... and the host keeps its carrier.
    let carrier = lab
        .command(1, "cat")
        .arg("/sys/class/net/eth0/carrier")
        .output()?;
    assert_eq!(String::from_utf8_lossy(&carrier.stdout).trim(), "1");

    lab.link_up(1)?;
    connect(&lab, 0, addr, Duration::from_secs(5)).context("connect after link_up")?;
    // TCP retransmits what was written during the partition.
    accepted.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut buf = [0u8; 25];
    accepted.read_exact(&mut buf)?;
    assert_eq!(&buf, b"sent during the partition");
    Ok(())
}

/// (device, inode) of the namespace pinned at /var/run/netns/`name`.
fn ns_id(name: &str) -> anyhow::Result<(u64, u64)> {
    let m = std::fs::metadata(Path::new("/var/run/netns").join(name))?;
    Ok((m.dev(), m.ino()))
}

/// Whether any live process, or any thread of this one, is in a namespace of `ids`.
fn anything_in(ids: &[(u64, u64)]) -> Vec<String> {
    let mut links: Vec<String> = Vec::new();
    for dir in ["/proc", "/proc/self/task"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path().join("ns/net");
            if let Ok(m) = std::fs::metadata(&p) {
                if ids.contains(&(m.dev(), m.ino())) {
                    links.push(p.display().to_string());
                }
            }
        }
    }
    links
}

#[test]
fn drop_kills_every_process_and_deletes_every_namespace() -> anyhow::Result<()> {
    let lab = Lab::new("drop", 2)?;
    lab.impair(
        0,
        Impairment {
            delay: Duration::from_millis(10),
            ..Impairment::default()
        },
    )?;
    // A process that leaves a grandchild behind, and a plain one on the other host.
    let mut parent = lab
        .command(0, "sh")
        .args(["-c", "sleep 300 & echo $!; exec sleep 300"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let mut stdout = parent.stdout.take().expect("piped");
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let grandchild: u32 = line.trim().parse().context("grandchild pid")?;
    let mut other = lab.command(1, "sleep").arg("300").spawn()?;
    let names = lab.all_netns();
    let ids: Vec<(u64, u64)> = names.iter().map(|n| ns_id(n)).collect::<Result<_, _>>()?;
    assert!(
        !anything_in(&ids).is_empty(),
        "the lab's processes are visible"
    );

    drop(lab);
    assert_eq!(parent.wait()?.signal(), Some(libc::SIGKILL));
    assert_eq!(other.wait()?.signal(), Some(libc::SIGKILL));
    let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
    let state = state.rsplit(')').next().unwrap_or("").trim_start();
    assert!(
        state.is_empty() || state.starts_with('Z'),
        "grandchild {grandchild}: {state}"
    );
    for n in &names {
        assert!(!Path::new("/var/run/netns").join(n).exists(), "{n} is left");
    }
    assert_eq!(anything_in(&ids), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_new_lab_removes_namespaces_left_by_a_dead_test_process() -> anyhow::Result<()> {
    let mut gone = std::process::Command::new("true").spawn()?;
    gone.wait()?;
    let stale = format!("rtlab{}-1-stale-sw", gone.id());
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let _lab = Lab::new("fresh", 1)?;
    assert!(
        !Path::new("/var/run/netns").join(&stale).exists(),
        "{stale} was kept"
    );
    Ok(())
}
