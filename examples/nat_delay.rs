//! The NAT lab's path latency (tests/nat_lab.sh): this kernel has no netem, so an iptables
//! `NFQUEUE` rule hands each packet arriving on a NAT router's WAN interface to this helper,
//! which holds it for a fixed one-way delay before letting it through.
//!
//!   nat_delay QUEUE DELAY_MS
//!
//! Run it inside the router's network namespace (queues are per namespace) before adding
//! the rule. It prints `nat_delay: ready` once bound, then runs until killed. Packets are
//! let through in the order they came, each `DELAY_MS` after it came; the hold is measured
//! from when the packet is read off the queue, so under load it can only err long.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

/// Longest sleep while packets are held and none is due: how late one can be let through
/// when another arrives meanwhile.
const POLL: Duration = Duration::from_micros(200);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(queue), Some(delay)) = (
        args.get(1).and_then(|a| a.parse::<u16>().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: nat_delay QUEUE DELAY_MS");
        std::process::exit(2);
    };
    if let Err(e) = run(queue, Duration::from_millis(delay)) {
        eprintln!("nat_delay: {e}");
        std::process::exit(1);
    }
}

fn run(num: u16, delay: Duration) -> std::io::Result<()> {
    let mut q = Queue::open()?;
    q.bind(num)?;
    // Metadata only: the verdict needs no payload.
    q.set_copy_range(num, 0)?;
    q.set_queue_max_len(num, 65_536)?;
    eprintln!("nat_delay: ready (queue {num}, {} ms)", delay.as_millis());
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(Verdict::Accept);
                q.verdict(msg)?;
            }
        }
        // Block while nothing is held; otherwise poll until the next one is due.
        q.set_nonblocking(!held.is_empty());
        match q.recv() {
            Ok(msg) => held.push_back((Instant::now() + delay, msg)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let next = held.front().map(|(due, _)| *due).unwrap_or(now);
                std::thread::sleep(next.saturating_duration_since(Instant::now()).min(POLL));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
