//! Channel fan-out, side by side with a Mosquitto broker: one publisher, `members`
//! subscribers, `messages` posts at a fixed pace. For ptpchat a member has a post when it
//! is verified and durably stored (what `recv` shows); for Mosquitto when the subscriber
//! reads the PUBLISH (QoS 0, no persistence). Latency is from publishing to the last
//! member's delivery.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ptpchat::config::Mode;
use ptpchat::node::{self, RunningNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What one run measured.
pub struct Fan {
    /// Fraction of (member, message) pairs delivered.
    pub delivery: f64,
    /// Per message, publish to the last member's delivery (delivered-to-all messages only).
    pub to_last: Vec<Duration>,
    /// Every (member, message) delivery's latency, sorted: where the tail comes from.
    pub each: Vec<Duration>,
    /// CPU time this process spent per post while measuring, less what the idle mesh costs
    /// in as long (ptpchat only: every node is in this process).
    pub cpu_per_post: Option<Duration>,
    /// The raw CPU per post (nothing taken out) and the idle mesh's cost per second,
    /// measured before the posts and after them; the smaller idle figure is the one taken out.
    pub cpu_raw_per_post: Option<Duration>,
    pub idle_ms_per_sec: Option<(f64, f64)>,
    /// Members the publisher had as gossip peers on the channel when measuring (its
    /// flood-publish reaches these directly; the rest hear the post from the mesh).
    pub direct: Option<usize>,
}

/// CPU time (user + system) this process has used so far.
fn process_cpu() -> Duration {
    // SAFETY: rusage is plain integers, so all-zero is a valid value; getrusage only
    // writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The CPU this process spends per second of wall time over `window`.
async fn idle_rate(window: Duration) -> f64 {
    let (from, cpu) = (Instant::now(), process_cpu());
    tokio::time::sleep(window).await;
    process_cpu().saturating_sub(cpu).as_secs_f64() / from.elapsed().as_secs_f64()
}

/// Posts carry their number, padded to the same 100 bytes on both systems.
fn payload(seq: usize) -> String {
    format!("{seq:<100}")
}

fn seq_of(text: &[u8]) -> Option<usize> {
    std::str::from_utf8(text).ok()?.trim_end().parse().ok()
}

fn summarise(
    published: &[Instant],
    arrivals: &HashMap<usize, Vec<Instant>>,
    members: usize,
) -> Fan {
    let total: usize = arrivals.values().map(|v| v.len()).sum();
    let mut to_last: Vec<Duration> = arrivals
        .iter()
        .filter(|(_, v)| v.len() == members)
        .filter_map(|(s, v)| Some(*v.iter().max()? - published[*s]))
        .collect();
    to_last.sort();
    let mut each: Vec<Duration> = arrivals
        .iter()
        .flat_map(|(s, v)| v.iter().map(move |a| *a - published[*s]))
        .collect();
    each.sort();
    Fan {
        delivery: total as f64 / (members * published.len()) as f64,
        to_last,
        each,
        cpu_per_post: None,
        cpu_raw_per_post: None,
        idle_ms_per_sec: None,
        direct: None,
    }
}

async fn collect(
    mut rx: mpsc::UnboundedReceiver<(usize, Instant)>,
    want: usize,
    deadline: Duration,
) -> HashMap<usize, Vec<Instant>> {
    let mut arrivals: HashMap<usize, Vec<Instant>> = HashMap::new();
    let mut got = 0;
    let end = tokio::time::Instant::now() + deadline;
    while got < want {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some((seq, at))) => {
                arrivals.entry(seq).or_default().push(at);
                got += 1;
            }
            _ => break,
        }
    }
    arrivals
}

/// ptpchat: a relay, a publisher and `members` nodes in this process, on loopback TCP.
pub async fn gossip(members: usize, messages: usize, pace: Duration, settle: Duration) -> Fan {
    let dir = tempfile::tempdir().unwrap();
    let relay = node::start(super::common::test_config(
        Mode::Relay,
        &dir.path().join("r"),
        &[],
    ))
    .await
    .expect("relay starts");
    let boot = vec![relay.listen_addrs().await[0].clone()];
    let start_user = |home: std::path::PathBuf| {
        let boot = boot.clone();
        async move {
            let mut cfg = super::common::test_config(Mode::User, &home, &boot);
            cfg.public = true;
            // Members discover the channel from the announcement their arrival triggers
            // (held back by the 2 s debounce, then sent); they keep the default 2-minute
            // re-announce interval, as users do. (At 10 s, 51 nodes re-announcing and
            // looking providers up loaded the very mesh being measured.)
            node::start(cfg).await.expect("member starts")
        }
    };
    let publisher = start_user(dir.path().join("p")).await;
    let pc = publisher.channels.clone().unwrap();
    let id = pc.create("bench", false).await.expect("channel created");
    let topic = ptpchat::wire::frame::topic(&id);

    let mut nodes: Vec<RunningNode> = Vec::new();
    for chunk in (0..members).collect::<Vec<_>>().chunks(10) {
        let started = futures::future::join_all(
            chunk
                .iter()
                .map(|i| start_user(dir.path().join(format!("m{i}")))),
        )
        .await;
        nodes.extend(started);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, n) in nodes.iter().enumerate() {
        let c = n.channels.clone().unwrap();
        super::common::eventually(
            Duration::from_secs(60),
            "the channel to be discovered",
            || {
                let c = c.clone();
                async move { c.list(true).iter().any(|v| v.name == "bench").then_some(()) }
            },
        )
        .await;
        c.join(&id.to_string()).await.expect("joins");
        let mut stored = n.messenger.as_ref().unwrap().subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok((_, e)) = stored.recv().await {
                if let Some(seq) = seq_of(e.text.as_bytes()) {
                    let _ = tx.send((i, seq, Instant::now()));
                }
            }
        });
    }
    // The mesh is formed when a warm-up post reaches every member.
    let (wtx, mut wrx) = mpsc::unbounded_channel();
    let (ftx, frx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some((i, seq, at)) = rx.recv().await {
            if seq >= 1_000_000 {
                let _ = wtx.send(i);
            } else {
                let _ = ftx.send((seq, at));
            }
        }
    });
    let mut warm = 1_000_000;
    loop {
        let _ = pc.send("bench", payload(warm)).await;
        let mut seen = std::collections::HashSet::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < members {
            match tokio::time::timeout_at(end, wrx.recv()).await {
                Ok(Some(i)) => {
                    seen.insert(i);
                }
                _ => break,
            }
        }
        if seen.len() == members {
            break;
        }
        warm += 1;
        assert!(
            warm < 1_000_030,
            "the mesh never reached all {members} members"
        );
    }
    // Measure the steady state: 51 nodes starting at once on 2 cores (dials, DHT and
    // provider lookups, identify, the announcements each new connection triggers) keep the
    // machine busy for tens of seconds, and posts measured in that storm wait behind it.
    // What the idle mesh costs (heartbeats, gossip, pings), measured over the end of the
    // settle, to take out of the posts' share.
    let idle_window = Duration::from_secs(5)
        .min(settle)
        .max(Duration::from_secs(1));
    tokio::time::sleep(settle.saturating_sub(idle_window)).await;
    let idle_before = idle_rate(idle_window).await;
    eprintln!("fanout: measuring");

    let direct = publisher
        .client
        .gossip_peers(topic)
        .await
        .map(|p| p.len())
        .ok();

    let (cpu_before, measuring) = (process_cpu(), Instant::now());
    let mut published = Vec::with_capacity(messages);
    let mut tick = tokio::time::interval(pace);
    for seq in 0..messages {
        tick.tick().await;
        published.push(Instant::now());
        pc.send("bench", payload(seq)).await.expect("published");
    }
    let arrivals = collect(frx, members * messages, Duration::from_secs(60)).await;
    let (raw, window) = (
        process_cpu().saturating_sub(cpu_before),
        measuring.elapsed(),
    );
    // The idle mesh's cost, once more after the posts: the window before them sometimes
    // still holds the tail of the start-up storm (seen from 32 to 380 ms/s in one evening),
    // and taking that out made CPU per post swing by half. The smaller of the two is the
    // idle cost; what the posts left behind (gossip, IWANTs) counts against them.
    let idle_after = idle_rate(idle_window).await;
    let idle = Duration::from_secs_f64(idle_before.min(idle_after) * window.as_secs_f64());
    let per_post = |d: Duration| d / messages.max(1) as u32;
    let mut fan = summarise(&published, &arrivals, members);
    fan.cpu_per_post = Some(per_post(raw.saturating_sub(idle)));
    fan.cpu_raw_per_post = Some(per_post(raw));
    fan.idle_ms_per_sec = Some((idle_before * 1e3, idle_after * 1e3));
    fan.direct = direct;
    for n in nodes {
        n.shutdown().await;
    }
    publisher.shutdown().await;
    relay.shutdown().await;
    fan
}

// ---- a minimal MQTT 3.1.1 client (CONNECT, SUBSCRIBE, PUBLISH at QoS 0) ----

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend(body);
    p
}

async fn read_packet(r: &mut BufReader<TcpStream>) -> std::io::Result<(u8, Vec<u8>)> {
    let first = r.read_u8().await?;
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let b = r.read_u8().await?;
        len += (b & 0x7f) as usize * mult;
        mult *= 128;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}

async fn mqtt_connect(port: u16, client_id: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("broker up");
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s);
    let mut body = Vec::new();
    mqtt_str("MQTT", &mut body);
    body.extend([4, 0x02, 0, 60]);
    mqtt_str(client_id, &mut body);
    r.get_mut().write_all(&packet(0x10, &body)).await.unwrap();
    let (kind, ack) = read_packet(&mut r).await.unwrap();
    assert_eq!((kind, ack.get(1)), (0x20, Some(&0)), "CONNACK");
    r
}

/// The broker: Debian's `mosquitto` on a free loopback port, installed if missing.
struct Broker {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> Option<&'static str> {
    let found = |p: &str| Path::new(p).exists();
    if !found("/usr/sbin/mosquitto") {
        eprintln!("mosquitto is missing; installing Debian's package");
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "mosquitto"])
            .status();
    }
    found("/usr/sbin/mosquitto").then_some("/usr/sbin/mosquitto")
}

fn broker() -> Option<Broker> {
    let bin = mosquitto_binary()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().ok()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n"
        ),
    )
    .ok()?;
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Broker {
        child,
        port,
        _dir: dir,
    })
}

/// Mosquitto: the same members, messages, payload and pace. `None` if no broker can run.
pub async fn mosquitto(members: usize, messages: usize, pace: Duration) -> Option<Fan> {
    let b = broker()?;
    let (tx, rx) = mpsc::unbounded_channel();
    for i in 0..members {
        let mut r = mqtt_connect(b.port, &format!("sub{i}")).await;
        let mut body = vec![0, 1];
        mqtt_str("bench", &mut body);
        body.push(0);
        r.get_mut().write_all(&packet(0x82, &body)).await.unwrap();
        let (kind, _) = read_packet(&mut r).await.unwrap();
        assert_eq!(kind, 0x90, "SUBACK");
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok((first, body)) = read_packet(&mut r).await {
                if first >> 4 != 3 || body.len() < 2 {
                    continue;
                }
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                if let Some(seq) = body.get(2 + tl..).and_then(seq_of) {
                    let _ = tx.send((seq, Instant::now()));
                }
            }
        });
    }
    let mut publisher = mqtt_connect(b.port, "publisher").await;
    let mut published = Vec::with_capacity(messages);
    let mut tick = tokio::time::interval(pace);
    for seq in 0..messages {
        tick.tick().await;
        let mut body = Vec::new();
        mqtt_str("bench", &mut body);
        body.extend(payload(seq).as_bytes());
        published.push(Instant::now());
        publisher
            .get_mut()
            .write_all(&packet(0x30, &body))
            .await
            .unwrap();
    }
    let arrivals = collect(rx, members * messages, Duration::from_secs(30)).await;
    Some(summarise(&published, &arrivals, members))
}
