//! Ring all-reduce between two local processes: time for the 41,132-float gradient of the
//! ResNet-ish model and bandwidth on a 64 MB buffer. Used by `make bench`.
//!
//! `ringbench` (no arguments) binds two ports, starts a copy of itself as rank 1 and runs rank 0;
//! it prints one JSON line: {"grad_floats", "grad_us_median", "big_bytes", "big_ms_median", "big_gbps"}.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ringtrain_worker::collective::ring::{Ring, RingConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(rank: u32, listener: TcpListener, peers: Vec<SocketAddr>) -> (f64, f64) {
    let cfg = RingConfig::new("ringbench", rank, 2, peers, Duration::from_secs(30));
    let mut ring = Ring::connect(listener, cfg).expect("ring connects on loopback");
    let mut grad = vec![1.0f32; 41_132];
    let mut t = Vec::new();
    for i in 0..220 {
        let s = Instant::now();
        ring.all_reduce_mean(&mut grad)
            .expect("all-reduce of the gradient");
        if i >= 20 {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    let mut big = vec![1.0f32; 16 << 20];
    let mut tb = Vec::new();
    for i in 0..7 {
        let s = Instant::now();
        ring.all_reduce_mean(&mut big).expect("all-reduce of 64 MB");
        if i >= 2 {
            tb.push(s.elapsed().as_secs_f64());
        }
    }
    (median(t), median(tb))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--rank1" {
        let listener = TcpListener::bind(&args[2]).expect("rank 1 binds its port");
        let peers = vec![
            args[3].parse().expect("rank 0 address"),
            args[2].parse().expect("rank 1 address"),
        ];
        run(1, listener, peers);
        return;
    }
    let l0 = TcpListener::bind("127.0.0.1:0").expect("bind rank 0");
    let a0 = l0.local_addr().expect("rank 0 address");
    let a1 = {
        let l = TcpListener::bind("127.0.0.1:0").expect("probe a free port");
        l.local_addr().expect("free port")
    };
    let exe = std::env::current_exe().expect("own path");
    let mut child = std::process::Command::new(exe)
        .args(["--rank1", &a1.to_string(), &a0.to_string()])
        .spawn()
        .expect("start rank 1");
    let (grad, big) = run(0, l0, vec![a0, a1]);
    let _ = child.wait();
    let bytes = (16usize << 20) * 4;
    println!(
        "{{\"grad_floats\": 41132, \"grad_us_median\": {:.1}, \"big_bytes\": {bytes}, \"big_ms_median\": {:.1}, \"big_gbps\": {:.3}}}",
        grad * 1e6,
        big * 1e3,
        bytes as f64 / big / 1e9
    );
}
