//! The browser app in a real headless Chromium (Debian's `chromium` and `chromedriver`),
//! driven over WebDriver, against two real nodes on loopback behind one relay: Alice adds
//! Bob from the contact URI his page shows, sends a message (whose text is HTML) and a
//! picture, Bob's page shows both live, Bob answers and drops a file on his composer that
//! Alice's page offers as a download, Alice asks for a direct connection and
//! Bob accepts the prompt in his page, then a private channel carries posts both ways.
//! Screenshots of the main views go to `target/screenshots/`.
//!
//! Without chromium or chromedriver the test says so and does nothing.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cli, Daemon};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(40);

/// A `w` x `h` PNG picture (a sunset of sorts), written out plainly: a stored-deflate zlib
/// stream, so the test needs no image crate.
fn picture(w: u32, h: u32) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0);
        for x in 0..w {
            let sky = (255 * y / h) as u8;
            raw.extend([255, 180u8.saturating_sub(sky / 2), (80 + x * 100 / w) as u8]);
        }
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend((b.len() as u16).to_le_bytes());
        z.extend((!(b.len() as u16)).to_le_bytes());
        z.extend(*b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// chromedriver on a free loopback port, in a process group of its own: dropped (also when
/// the test fails), it and every browser it started are killed.
struct Driver {
    child: Child,
    url: String,
    /// The browsers' profiles are under here: any browser left is found by it.
    profiles: PathBuf,
}

impl Driver {
    fn start(profiles: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url,
            profiles: profiles.to_path_buf(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let profiles = format!("--user-data-dir={}", self.profiles.display());
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--", &profiles])
            .status();
    }
}

/// A new headless Chromium with its own empty profile, told not to reach anything but
/// loopback (this machine's network is closed).
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1200,800".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": CHROMIUM, "args": args }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

fn user(home: &Path, relay: &str, policy: &str) -> Daemon {
    let d = Daemon::spawn(
        home,
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            relay,
            "--accept-connect",
            policy,
            "--quiet",
        ],
    );
    d.wait_ready();
    d
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The URL `ptpchat ui` prints: the app, with the token in its fragment.
fn app_url(home: &Path) -> String {
    let r = cli(home, &["ui", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()["url"].as_str().unwrap().to_string()
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Waits for an element that matches `css` and whose text contains `text`.
async fn find_text(c: &Client, css: &str, text: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + WAIT;
    loop {
        for e in c.find_all(Locator::Css(css)).await.unwrap() {
            if e.text().await.is_ok_and(|t| t.contains(text)) {
                return e;
            }
        }
        if Instant::now() > deadline {
            let body = c.find(Locator::Css("body")).await.unwrap();
            panic!(
                "no {css} with {text:?} on the page; it shows:\n{}",
                body.text().await.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Clicks the element that matches `css` and shows `text`; an element the page redrew
/// meanwhile is looked for again.
async fn click_text(c: &Client, css: &str, text: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match find_text(c, css, text).await.click().await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "{css} {text:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap();
    e.send_keys(text).await.unwrap();
}

/// Types a message in the open conversation and sends it with Enter.
async fn say(c: &Client, text: &str) {
    type_into(c, "#compose", text).await;
    type_into(c, "#compose", "\u{E007}").await;
}

/// What a script on the page answers.
async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.unwrap()
}

#[test]
fn two_people_chat_in_their_browsers() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!(
            "SKIPPED: the browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium and chromium-driver; .ci/run installs them)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Daemon::spawn(
        &dir.path().join("relay"),
        &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let relay_addr = relay.dial_addr();
    let (alice_home, bob_home) = (dir.path().join("alice"), dir.path().join("bob"));
    let _alice = user(&alice_home, &relay_addr, "none");
    let _bob = user(&bob_home, &relay_addr, "ask");
    let uuid = |home: &Path| {
        cli(home, &["id", "--json"]).json()["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (alice_uuid, bob_uuid) = (uuid(&alice_home), uuid(&bob_home));
    wait_until("each one's document with a circuit address", || {
        let a = cli(&alice_home, &["whois", &bob_uuid, "--json"]);
        let b = cli(&bob_home, &["whois", &alice_uuid, "--json"]);
        a.code == 0
            && a.stdout.contains("p2p-circuit")
            && b.code == 0
            && b.stdout.contains("p2p-circuit")
    });
    let picture_path = dir.path().join("sunset.png");
    std::fs::write(&picture_path, picture(160, 100)).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start(dir.path());
    rt.block_on(async {
        let a = browser(&driver, &dir.path().join("alice-profile")).await;
        let b = browser(&driver, &dir.path().join("bob-profile")).await;
        a.goto(&app_url(&alice_home)).await.unwrap();
        b.goto(&app_url(&bob_home)).await.unwrap();
        // The token left the address bar once the page took it.
        let url = a.current_url().await.unwrap();
        assert!(url.fragment().is_none(), "{url}");

        // Bob's page shows who he is; Alice adds him from the URI it shows.
        let uri = find_text(&b, ".kv dd", "ptpchat:").await.text().await.unwrap();
        assert!(uri.contains(&bob_uuid), "{uri}");
        let qr_ok = js(&b, "const i = document.querySelector('img.qr'); return i.complete && i.naturalWidth > 20;").await;
        assert_eq!(qr_ok, serde_json::json!(true), "the QR code is drawn");
        shot(&b, "identity").await;
        click(&a, "#nav-add").await;
        type_into(&a, "#add-name", "bob").await;
        type_into(&a, "#add-target", &uri).await;
        click_text(&a, "button", "Add contact").await;
        find_text(&a, ".conv-head", "verified").await;

        // A message whose text is HTML, and a picture.
        let hostile = "<img src=x onerror=window.owned=1> hi bob";
        say(&a, hostile).await;
        let file = a.find(Locator::Css("#file")).await.unwrap();
        file.send_keys(&picture_path.to_string_lossy()).await.unwrap();
        find_text(&a, ".chip", "sunset.png").await;
        click(&a, "#send").await;
        find_text(&a, ".msg.out .state", "delivered").await;

        // Bob's page shows both as they come, as text; nothing in the text ran.
        click_text(&b, ".nav-item", "not a contact").await;
        let shown = find_text(&b, ".msg.in .text", "hi bob").await;
        assert_eq!(shown.text().await.unwrap(), hostile);
        let ran = js(&b, "return [window.owned === undefined, document.querySelectorAll('.msg img[src=\"x\"]').length];").await;
        assert_eq!(ran, serde_json::json!([true, 0]), "peer text is never HTML");
        let deadline = Instant::now() + WAIT;
        loop {
            let drawn = js(&b, "const i = document.querySelector('.msg.in img.att'); return !!i && i.complete && i.naturalWidth === 160;").await;
            if drawn == serde_json::json!(true) {
                break;
            }
            // The file arrives after its message: the page shows it once it is there.
            assert!(Instant::now() < deadline, "the picture never showed in Bob's page");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        shot(&b, "conversation").await;

        // Bob answers; Alice's page shows it live.
        say(&b, "hi alice, got the picture").await;
        find_text(&b, ".msg.out .state", "delivered").await;
        find_text(&a, ".msg.in .text", "hi alice, got the picture").await;
        shot(&a, "conversation-alice").await;

        // Bob drops a file on the composer; Alice's page offers it as a download.
        js(
            &b,
            "const dt = new DataTransfer(); \
             dt.items.add(new File(['minutes of the meeting'], 'notes.txt', { type: 'text/plain' })); \
             const f = document.querySelector('.composer'); \
             f.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true })); \
             f.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })); \
             return true;",
        )
        .await;
        find_text(&b, ".chip", "notes.txt").await;
        click(&b, "#send").await;
        let link = find_text(&a, ".msg.in a.att", "notes.txt").await;
        assert_eq!(link.attr("download").await.unwrap().as_deref(), Some("notes.txt"));
        let deadline = Instant::now() + WAIT;
        loop {
            let got = a
                .execute_async(
                    "const done = arguments[arguments.length - 1]; \
                     fetch('/api/v1' + document.querySelector('.msg.in a.att').dataset.file, \
                       { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('ptpchat.token') } }) \
                       .then(r => r.ok ? r.text() : '').then(done, () => done(''));",
                    vec![],
                )
                .await
                .unwrap();
            if got == serde_json::json!("minutes of the meeting") {
                break;
            }
            assert!(Instant::now() < deadline, "the dropped file never arrived: {got}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Alice asks for a direct connection; Bob's page asks him.
        click_text(&a, "button", "Connect directly").await;
        let prompt = find_text(&b, ".prompt", "asks to connect").await;
        assert!(prompt.text().await.unwrap().contains(&alice_uuid));
        shot(&b, "connect-prompt").await;
        click_text(&b, ".prompt button", "Accept").await;
        find_text(&a, ".error", "Connected directly").await;
        let gone = js(&b, "return document.querySelectorAll('.prompt').length;").await;
        assert_eq!(gone, serde_json::json!(0), "the answered prompt went away");

        // A private channel: Alice creates it and invites Bob; Bob accepts in his page.
        click(&a, "#nav-channels").await;
        type_into(&a, "#new-channel", "team").await;
        click(&a, "#new-private").await;
        click_text(&a, "button", "Create").await;
        find_text(&a, ".conv-head", "#team").await;
        click_text(&a, "button", "Invite").await;
        type_into(&a, "#invite-who", "bob").await;
        click_text(&a, "form button", "Invite").await;
        find_text(&a, ".conv-head", "#team").await;
        let deadline = Instant::now() + WAIT;
        loop {
            click(&b, "#nav-channels").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let found = js(&b, "return [...document.querySelectorAll('.rows button')].some(b => b.textContent === 'Accept invitation');").await;
            if found == serde_json::json!(true) {
                break;
            }
            assert!(Instant::now() < deadline, "Bob's page never showed the invitation");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        click_text(&b, ".rows button", "Accept invitation").await;
        find_text(&b, ".conv-head", "#team").await;
        let deadline = Instant::now() + WAIT;
        loop {
            say(&b, "post from bob").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let err = js(&b, "const e = document.querySelector('.composer .error'); return e ? e.textContent : '';").await;
            if err == serde_json::json!("") {
                break;
            }
            // Not sent: no member connected yet (the mesh is forming). Try again.
            assert!(Instant::now() < deadline, "Bob's post never went out: {err}");
            js(&b, "document.getElementById('compose').value = '';").await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        click_text(&a, ".nav-item", "#team").await;
        find_text(&a, ".msg.in .text", "post from bob").await;
        say(&a, "post from alice").await;
        find_text(&b, ".msg.in .text", "post from alice").await;
        shot(&a, "channel").await;

        // Phone width: the list, then a conversation with a way back.
        a.set_window_size(390, 800).await.unwrap();
        click(&a, "#back").await;
        click_text(&a, ".nav-item", "bob").await;
        find_text(&a, ".msg.in .text", "got the picture").await;
        let back = a.find(Locator::Css("#back")).await.unwrap();
        assert!(back.is_displayed().await.unwrap(), "a way back to the list on a phone");
        shot(&a, "phone").await;

        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}
