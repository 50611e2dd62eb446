// ptpchat in the browser: plain JavaScript against the node's HTTP API (docs/http-api.md).
// Everything from peers is put on the page as text (textContent), never as HTML.
"use strict";

const API = "/api/v1";
const INLINE = ["image/png", "image/jpeg", "image/gif", "image/webp"];
const STATES = {
  queued: "queued",
  stored: "stored at mailbox",
  delivered: "delivered",
  failed: "failed",
  expired: "not delivered in 7 days",
  sent: "sent",
  sending: "sending…",
};

const S = {
  token: null,
  me: null,
  contacts: [],
  channels: [],
  // Conversations by key: "c:<uuid>" for a person, "ch:<channel id>" for a channel.
  convs: new Map(),
  byMsg: new Map(),
  current: null,
  requests: [],
  lastId: null,
  read: JSON.parse(localStorage.getItem("ptpchat.read") || "{}"),
};

// ---- the page's building blocks -------------------------------------------------------

// el("div", {class: "x", onclick: f}, "text", child): strings become text nodes.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(typeof k === "string" ? document.createTextNode(k) : k);
  }
  return e;
}

const $ = (id) => document.getElementById(id);

// ---- talking to the node --------------------------------------------------------------

class ApiError extends Error {
  constructor(message, kind, status) { super(message); this.kind = kind; this.status = status; }
}

async function api(method, path, body, extra) {
  const headers = { Authorization: "Bearer " + S.token };
  let payload;
  if (body instanceof Blob) {
    headers["Content-Type"] = "application/octet-stream";
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  Object.assign(headers, extra || {});
  let res;
  try {
    res = await fetch(API + path, { method, headers, body: payload, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError("Your node does not answer. Is `ptpchat run` still running?", "unreachable", 0);
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const words = (data && data.error) || "the node refused (" + res.status + ")";
    throw new ApiError(words, data && data.kind, res.status);
  }
  return { data, status: res.status };
}

const enc = encodeURIComponent;

// ---- conversations --------------------------------------------------------------------

function convKey(m) {
  if (m.channel_id) return "ch:" + m.channel_id;
  return "c:" + (m.direction === "in" ? m.from : m.to);
}

function conv(key) {
  let c = S.convs.get(key);
  if (!c) {
    c = { key, messages: [] };
    S.convs.set(key, c);
  }
  return c;
}

// A message is known by its sender and its id: ids are the sender's choice, so two
// senders may use the same one, and neither may stand in for the other's message.
function msgKey(m) {
  return m.from + "/" + m.msg_id;
}

function addMessage(m) {
  const k = msgKey(m);
  if (S.byMsg.has(k)) {
    Object.assign(S.byMsg.get(k), m);
    return false;
  }
  S.byMsg.set(k, m);
  conv(convKey(m)).messages.push(m);
  return true;
}

function unread(key) {
  const c = S.convs.get(key);
  if (!c) return 0;
  const seen = S.read[key] || "";
  return c.messages.filter((m) => m.direction === "in" && m.timestamp > seen).length;
}

function markRead(key) {
  const c = S.convs.get(key);
  if (!c || !c.messages.length) return;
  S.read[key] = c.messages[c.messages.length - 1].timestamp;
  localStorage.setItem("ptpchat.read", JSON.stringify(S.read));
}

function contactFor(uuid) {
  return S.contacts.find((c) => c.uuid === uuid);
}

// ---- the side list --------------------------------------------------------------------

function navButton(key, label, tags, onclick) {
  const n = unread(key);
  return el("li", {},
    el("button", {
      class: "nav-item", type: "button", "aria-current": S.current === key ? "true" : "false",
      "data-key": key, onclick,
    },
    el("span", { class: "name" }, label), ...tags,
    n ? el("span", { class: "badge", "aria-label": n + " unread" }, String(n)) : null));
}

function renderSide() {
  // Redrawn as messages come: the focus stays on the item it was on.
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
  const list = $("contacts");
  list.replaceChildren();
  const known = new Set();
  for (const c of S.contacts) {
    const key = "c:" + c.uuid;
    known.add(key);
    const tags = [];
    if (c.key_changed) tags.push(el("span", { class: "tag changed" }, "key changed"));
    else if (c.verified) tags.push(el("span", { class: "tag verified" }, "verified"));
    list.append(navButton(key, c.name, tags, () => openConv(key)));
  }
  // Strangers who wrote to us.
  for (const key of S.convs.keys()) {
    if (!key.startsWith("c:") || known.has(key)) continue;
    const uuid = key.slice(2);
    list.append(navButton(key, uuid.slice(0, 8) + "…", [el("span", { class: "tag" }, "not a contact")], () => openConv(key)));
  }
  if (!list.children.length) list.append(el("li", { class: "empty-note" }, "No contacts yet."));
  const chans = $("channels");
  chans.replaceChildren();
  for (const ch of S.channels.filter((c) => c.joined || c.invited)) {
    const key = "ch:" + ch.channel_id;
    const tags = [];
    if (ch.private) tags.push(el("span", { class: "tag" }, "private"));
    if (ch.invited && !ch.joined) tags.push(el("span", { class: "tag verified" }, "invited"));
    chans.append(navButton(key, "#" + ch.name, tags, () => openConv(key)));
  }
  if (!chans.children.length) chans.append(el("li", { class: "empty-note" }, "In no channel yet."));
  if (focused) {
    const again = document.querySelector('.side [data-key="' + CSS.escape(focused) + '"]');
    if (again) again.focus();
  }
  const total = [...S.convs.keys()].reduce((n, k) => n + unread(k), 0);
  document.title = total ? "(" + total + ") ptpchat" : "ptpchat";
}

// ---- views ----------------------------------------------------------------------------

function show(view, key) {
  S.current = key || null;
  const main = $("main");
  main.replaceChildren(view);
  $("app").classList.add("in-main");
  renderSide();
}

function errorLine() {
  return el("p", { class: "error", role: "alert" });
}

// Runs `f`, putting its error (in words) in `line`; disables `button` meanwhile.
async function attempt(line, button, f) {
  line.textContent = "";
  if (button) button.disabled = true;
  try {
    return await f();
  } catch (e) {
    line.textContent = e.message || String(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function showMe() {
  const me = S.me;
  const qr = el("img", { class: "qr", alt: "QR code of your contact URI" });
  fileUrl("/id/qr.svg").then((u) => { qr.src = u; }, () => qr.replaceWith(el("p", { class: "error" }, "The QR code could not be drawn.")));
  const view = el("section", { class: "pane", "aria-labelledby": "me-h" },
    el("h2", { id: "me-h" }, "You"),
    el("p", {}, "Give people your contact URI (or let them scan the code): with it they can reach you and check it is really you."),
    kv([["UUID", me.uuid], ["Fingerprint", me.fingerprint], ["Contact URI", el("span", { class: "copyable" }, me.contact_uri)]]),
    qr);
  show(view, "me");
}

function showAddContact(known) {
  const line = errorLine();
  const name = el("input", { id: "add-name", required: true, autocomplete: "off", placeholder: "bob" });
  const target = el("input", { id: "add-target", required: true, autocomplete: "off", placeholder: "ptpchat:… or a UUID" });
  if (typeof known === "string") target.value = known;
  const go = el("button", { class: "primary", type: "submit" }, "Add contact");
  const form = el("form", {
    class: "form",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const ok = await attempt(line, go, () => api("POST", "/contacts", { name: name.value.trim(), target: target.value.trim() }));
      if (ok) {
        await loadContacts();
        const c = S.contacts.find((c) => c.name === name.value.trim());
        if (c) openConv("c:" + c.uuid);
      }
    },
  },
  el("label", {}, "Name (yours for them)", name),
  el("label", {}, "Their contact URI or UUID", target),
  el("div", {}, go), line);
  show(el("section", { class: "pane" }, el("h2", {}, "Add a contact"),
    el("p", {}, "Paste the contact URI they gave you. A URI carries their fingerprint, so the contact starts verified; a bare UUID needs verifying later."),
    form), "add");
  name.focus();
}

function stateWords(m) {
  if (m.direction === "in") return null;
  let w = STATES[m.status] || m.status;
  if (m.status === "failed" && m.detail) w += ": " + m.detail;
  return el("span", { class: "state " + m.status, "data-state": m.status }, w);
}

// A file of the history (or the QR code), fetched with the token (no cookie carries it: a browser would send
// one to every server on this host), as a blob: URL. Kept per file for the page's life.
const blobs = new Map();
async function fileUrl(path) {
  if (blobs.has(path)) return blobs.get(path);
  const res = await fetch(API + path, { headers: { Authorization: "Bearer " + S.token } });
  if (!res.ok) throw new Error("not here yet");
  const url = URL.createObjectURL(await res.blob());
  blobs.set(path, url);
  return url;
}

function attachmentsOf(m) {
  return (m.attachments || []).map((a, i) => {
    const path = "/files/" + enc(m.from) + "/" + enc(m.msg_id) + "/" + i;
    if (INLINE.includes(a.mime)) {
      // A file comes after its message: until it is here the picture says so, and the page
      // looks again every 2 s (for 2 minutes), so it shows once it has arrived.
      const img = el("img", { class: "att hidden", alt: a.name, "data-file": path });
      const waiting = el("span", { class: "chip" }, a.name + " (arriving…)");
      const holder = el("span", {}, img, waiting);
      // It stops looking once it has been on the page and was taken off (a re-render drew
      // a new one); a first look that failed before it was on the page looks again.
      let shown = false;
      const load = (tries) => fileUrl(path).then((u) => {
        img.src = u;
        img.classList.remove("hidden");
        waiting.remove();
      }, () => {
        shown = shown || holder.isConnected;
        const removed = shown && !holder.isConnected;
        if (tries > 0 && !removed) setTimeout(() => load(tries - 1), 2000);
        else if (tries === 0) waiting.textContent = a.name + " (not here yet)";
      });
      // Drawn before it is on the page: the first look waits for that.
      setTimeout(() => load(60), 0);
      return holder;
    }
    const link = el("a", { class: "att", href: "#", download: a.name, "data-file": path }, "⬇ " + a.name + " (" + size(a.size) + ")");
    link.addEventListener("click", async (ev) => {
      if (link.getAttribute("href") !== "#") return;
      ev.preventDefault();
      try {
        link.href = await fileUrl(path);
        link.click();
      } catch (e) {
        link.textContent = a.name + " (not here yet)";
      }
    });
    return link;
  });
}

function size(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function when(ts) {
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleString([], { hour: "2-digit", minute: "2-digit", month: "short", day: "numeric" });
}

function messageEl(m, inChannel) {
  const who = inChannel && m.direction === "in" ? el("div", { class: "who" }, m.from_name || m.from.slice(0, 8)) : null;
  return el("div", { class: "msg " + m.direction, "data-msg": msgKey(m) },
    who,
    m.text ? el("div", { class: "text" }, m.text) : null,
    attachmentsOf(m),
    el("div", { class: "meta" }, el("time", { datetime: m.timestamp }, when(m.timestamp)), stateWords(m)));
}

function openConv(key) {
  if (key.startsWith("ch:")) return showChannel(key);
  const uuid = key.slice(2);
  const c = contactFor(uuid);
  const title = c ? c.name : uuid;
  const line = errorLine();
  const head = el("div", { class: "conv-head" }, el("h2", {}, title),
    c && c.key_changed ? el("span", { class: "tag changed" }, "key changed") :
      c && c.verified ? el("span", { class: "tag verified" }, "verified") : el("span", { class: "tag" }, "not verified"),
    el("div", { class: "actions" },
      c ? el("button", { type: "button", onclick: () => showVerify(c) }, "Verify") :
        el("button", { type: "button", onclick: () => showAddContact(uuid) }, "Add as contact"),
      el("button", {
        type: "button",
        onclick: async (ev) => {
          const r = await attempt(line, ev.target, () => api("POST", "/connect", { to: uuid }));
          if (r) line.textContent = r.data.status === "direct" ? "Connected directly." : "Could not connect directly (" + r.data.status + ").";
        },
      }, "Connect directly")));
  const warn = c && c.key_changed ? el("div", { class: "warnbox", role: "alert" },
    "This contact's key is not the one you pinned. Someone may be posing as them: compare fingerprints before you trust what arrives.") : null;
  const list = el("div", { class: "messages", id: "messages", "aria-live": "polite" });
  for (const m of conv(key).messages) list.append(messageEl(m, false));
  if (!conv(key).messages.length) list.append(el("p", { class: "empty-note" }, "No messages yet. Say hello."));
  const view = el("section", { class: "main", "aria-label": "Conversation with " + title }, head, warn, list,
    composer(async (text, files) => {
      const attach = [];
      for (const f of files) {
        const up = await api("POST", "/uploads?name=" + enc(f.name), f);
        attach.push(up.data.path);
      }
      const r = await api("POST", "/send", { to: c ? c.name : uuid, text, attach, timeout_ms: 3000 },
        { "Idempotency-Key": crypto.randomUUID() });
      // The send's own answer; history has the rest (attachments) on the next load.
      const sent = {
        msg_id: r.data.msg_id, direction: "out", from: S.me.uuid, to: uuid, timestamp: new Date().toISOString(),
        text, attachments: files.map((f) => ({ name: f.name, mime: f.type, size: f.size })), status: r.data.status,
        channel_id: null,
      };
      addMessage(sent);
      await refreshAttachments(sent);
      rerenderMessages();
    }, line, true));
  show(view, key);
  markRead(key);
  renderSide();
  list.scrollTop = list.scrollHeight;
}

// A sent message's attachment paths are known once it is in the history.
async function refreshAttachments(m) {
  if (!m.attachments.length) return;
  try {
    const r = await api("GET", "/history?with=" + enc(m.to));
    const h = r.data.find((x) => x.msg_id === m.msg_id);
    if (h) Object.assign(m, { attachments: h.attachments, timestamp: h.timestamp });
  } catch (e) { /* shown without pictures until the next load */ }
}

function composer(send, line, files) {
  const text = el("textarea", { id: "compose", rows: 1, placeholder: "Write a message", title: "Enter sends; Shift+Enter starts a new line", "aria-label": "Message" });
  const chips = el("div", { class: "chips" });
  let picked = [];
  const showChips = () => chips.replaceChildren(...picked.map((f, i) =>
    el("span", { class: "chip" }, f.name + " (" + size(f.size) + ") ",
      el("button", { type: "button", class: "small", "aria-label": "Remove " + f.name, onclick: () => { picked.splice(i, 1); showChips(); } }, "×"))));
  const picker = files ? el("input", { type: "file", id: "file", multiple: true, class: "hidden", onchange: () => { picked.push(...picker.files); picker.value = ""; showChips(); } }) : null;
  const go = el("button", { class: "primary", type: "submit", id: "send" }, "Send");
  const form = el("form", {
    class: "composer",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const words = text.value;
      if (!words.trim() && !picked.length) return;
      const ok = await attempt(line, go, async () => { await send(words, picked); return true; });
      if (ok) {
        text.value = "";
        picked = [];
        showChips();
      }
      text.focus();
    },
  }, line, chips, el("div", { class: "row" },
    text,
    files ? el("button", { type: "button", title: "Attach files", onclick: () => picker.click() }, "Attach") : null,
    picker, go));
  text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  if (files) {
    form.addEventListener("dragover", (ev) => { ev.preventDefault(); form.classList.add("drop"); });
    form.addEventListener("dragleave", () => form.classList.remove("drop"));
    form.addEventListener("drop", (ev) => {
      ev.preventDefault();
      form.classList.remove("drop");
      picked.push(...ev.dataTransfer.files);
      showChips();
    });
  }
  setTimeout(() => text.focus(), 0);
  return form;
}

function rerenderMessages() {
  if (!S.current) return;
  const list = $("messages");
  if (!list) return;
  const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const inChannel = S.current.startsWith("ch:");
  list.replaceChildren(...conv(S.current).messages.map((m) => messageEl(m, inChannel)));
  if (atEnd) list.scrollTop = list.scrollHeight;
  markRead(S.current);
}

function showVerify(c) {
  const line = errorLine();
  const fp = el("input", { id: "verify-fp", required: true, autocomplete: "off", placeholder: "their fingerprint" });
  const go = el("button", { class: "primary", type: "submit" }, "Mark verified");
  show(el("section", { class: "pane" }, el("h2", {}, "Verify " + c.name),
    el("p", {}, "Ask " + c.name + " for the fingerprint their node shows (by phone, or in person), and paste it here. It must match the key your node holds for them:"),
    kv([["Fingerprint held", c.fingerprint]]),
    el("form", {
      class: "form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const ok = await attempt(line, go, () => api("POST", "/contacts/" + enc(c.name) + "/verify", { fingerprint: fp.value.trim() }));
        if (ok) { await loadContacts(); openConv("c:" + c.uuid); }
      },
    }, el("label", {}, "Fingerprint they read out", fp), el("div", {}, go), line)), "c:" + c.uuid);
  fp.focus();
}

function channelOf(key) {
  return S.channels.find((c) => "ch:" + c.channel_id === key);
}

function showChannel(key) {
  const ch = channelOf(key);
  if (!ch) return showChannels();
  const line = errorLine();
  const ref = ch.channel_id;
  const actions = [];
  if (!ch.joined) {
    actions.push(el("button", { type: "button", class: "primary", onclick: async (ev) => {
      if (await attempt(line, ev.target, () => api("POST", "/channels/" + enc(ref) + "/join"))) { await loadChannels(); showChannel(key); }
    } }, "Join"));
  } else {
    actions.push(el("button", { type: "button", onclick: () => showMembers(ch) }, "Members"));
    if (ch.private) actions.push(el("button", { type: "button", onclick: () => showInvite(ch) }, "Invite"));
    actions.push(el("button", { type: "button", onclick: async (ev) => {
      if (await attempt(line, ev.target, () => api("POST", "/channels/" + enc(ref) + "/leave"))) { await loadChannels(); showChannels(); }
    } }, "Leave"));
  }
  const head = el("div", { class: "conv-head" }, el("h2", {}, "#" + ch.name),
    el("span", { class: "tag" }, ch.private ? "private" : "public"),
    el("span", { class: "tag" }, ch.members + (ch.members === 1 ? " member" : " members")),
    el("div", { class: "actions" }, actions));
  const list = el("div", { class: "messages", id: "messages", "aria-live": "polite" });
  const msgs = conv(key).messages;
  for (const m of msgs) list.append(messageEl(m, true));
  if (!msgs.length) list.append(el("p", { class: "empty-note" }, ch.joined ? "No posts yet." : "Join to read and post."));
  const view = el("section", { class: "main", "aria-label": "Channel " + ch.name }, head, list,
    ch.joined ? composer(async (text) => {
      const r = await api("POST", "/channels/" + enc(ref) + "/send", { text });
      addMessage({
        msg_id: r.data.msg_id, direction: "out", from: S.me.uuid, to: "", channel: ch.name, channel_id: ch.channel_id,
        timestamp: new Date().toISOString(), text, attachments: [], status: "sent",
      });
      rerenderMessages();
    }, line, false) : line);
  show(view, key);
  markRead(key);
  renderSide();
  list.scrollTop = list.scrollHeight;
}

async function showMembers(ch) {
  const line = errorLine();
  const rows = el("ul", { class: "rows" });
  const back = el("button", { type: "button", onclick: () => showChannel("ch:" + ch.channel_id) }, "Back to the channel");
  show(el("section", { class: "pane" }, el("h2", {}, "Members of #" + ch.name), rows, line, back), "ch:" + ch.channel_id);
  const r = await attempt(line, null, () => api("GET", "/channels/" + enc(ch.channel_id) + "/members"));
  if (!r) return;
  for (const m of r.data) {
    const remove = ch.private && m.name !== "(you)" ? el("button", { type: "button", class: "small", onclick: async (ev) => {
      if (await attempt(line, ev.target, () => api("POST", "/channels/" + enc(ch.channel_id) + "/remove", { who: m.uuid }))) showMembers(ch);
    } }, "Remove") : null;
    rows.append(el("li", {}, el("span", { class: "grow" }, m.name || m.uuid), el("code", {}, m.uuid.slice(0, 8)), remove));
  }
  if (!r.data.length) rows.append(el("li", { class: "empty-note" }, "No member known yet."));
}

function showInvite(ch) {
  const line = errorLine();
  const who = el("input", { id: "invite-who", required: true, placeholder: "a contact's name or a UUID" });
  const go = el("button", { class: "primary", type: "submit" }, "Invite");
  show(el("section", { class: "pane" }, el("h2", {}, "Invite to #" + ch.name),
    el("form", { class: "form", onsubmit: async (ev) => {
      ev.preventDefault();
      if (await attempt(line, go, () => api("POST", "/channels/" + enc(ch.channel_id) + "/invite", { who: who.value.trim() }))) {
        line.textContent = "";
        showChannel("ch:" + ch.channel_id);
      }
    } }, el("label", {}, "Who", who), el("div", {}, go), line)), "ch:" + ch.channel_id);
  who.focus();
}

async function showChannels() {
  const line = errorLine();
  const name = el("input", { id: "new-channel", required: true, placeholder: "rust", autocomplete: "off" });
  const priv = el("input", { type: "checkbox", id: "new-private" });
  const go = el("button", { class: "primary", type: "submit" }, "Create");
  const rows = el("ul", { class: "rows" });
  show(el("section", { class: "pane" }, el("h2", {}, "Channels"),
    el("form", { class: "form", onsubmit: async (ev) => {
      ev.preventDefault();
      const r = await attempt(line, go, () => api("POST", "/channels", { name: name.value.trim(), private: priv.checked }));
      if (r) { await loadChannels(); showChannel("ch:" + r.data.channel_id); }
    } },
    el("label", {}, "New channel name", name),
    el("label", { class: "inline" }, priv, "Private (only people you invite can read it)"),
    el("div", {}, go), line),
    el("h3", {}, "Public channels found on the network"), rows), "channels");
  await loadChannels();
  const found = S.channels.filter((c) => !c.joined);
  for (const c of found) {
    rows.append(el("li", {}, el("span", { class: "grow" }, "#" + c.name), el("span", { class: "tag" }, c.members + (c.members === 1 ? " member" : " members")),
      el("button", { type: "button", onclick: async (ev) => {
        if (await attempt(line, ev.target, () => api("POST", "/channels/" + enc(c.channel_id) + "/join"))) { await loadChannels(); showChannel("ch:" + c.channel_id); }
      } }, c.invited ? "Accept invitation" : "Join")));
  }
  if (!found.length) rows.append(el("li", { class: "empty-note" }, "None found yet: channels appear here as their members announce them."));
}

async function showNode() {
  const line = errorLine();
  const box = el("div", {});
  show(el("section", { class: "pane" }, el("h2", {}, "Your node"), box, line), "node");
  const r = await attempt(line, null, () => api("GET", "/status"));
  if (!r) return;
  const s = r.data;
  box.append(kv([
    ["Connected peers", String(s.connected_peers)],
    ["NAT", s.nat],
    ["Reachable at", s.external_addrs.length ? s.external_addrs.join("\n") : "(only through relays)"],
    ["Relays", s.relays.length ? s.relays.join("\n") : "(none needed or none yet)"],
    ["Listening on", s.listen_addrs.join("\n")],
    ["Channels", s.channels.length ? s.channels.join(", ") : "(none)"],
    ["Refused input", Object.entries(s.rejected || {}).filter(([, n]) => n).map(([k, n]) => k + ": " + n).join(", ") || "none"],
  ]));
}

// ---- CONNECT requests -----------------------------------------------------------------

function renderPrompts() {
  const box = $("prompts");
  box.replaceChildren(...S.requests.map((r) => {
    const line = el("span", { class: "error", role: "alert" });
    const answer = (verb) => async (ev) => {
      const ok = await attempt(line, ev.target, () => api("POST", "/requests/" + r.request_id + "/" + verb));
      if (ok) { S.requests = S.requests.filter((x) => x.request_id !== r.request_id); renderPrompts(); }
    };
    return el("div", { class: "prompt", "data-request": r.request_id },
      el("span", {}, (r.from_name || r.from) + (r.verified ? " (verified)" : "") + " asks to connect directly: your addresses would be shown to them."),
      el("button", { type: "button", class: "primary", onclick: answer("accept") }, "Accept"),
      el("button", { type: "button", onclick: answer("deny") }, "Deny"), line);
  }));
}

// ---- loading and the event stream -----------------------------------------------------

async function loadContacts() {
  S.contacts = (await api("GET", "/contacts")).data;
  renderSide();
}

// Every channel the node knows: those joined, invitations, and public ones discovered.
async function loadChannels() {
  S.channels = (await api("GET", "/channels?all=true")).data;
  renderSide();
}

async function loadHistory() {
  const r = await api("GET", "/history");
  for (const m of r.data) addMessage(m);
  if (r.data.length) S.lastId = r.data[r.data.length - 1].msg_id;
}

async function refreshStatus() {
  try {
    const s = (await api("GET", "/status")).data;
    $("status").textContent = s.connected_peers + (s.connected_peers === 1 ? " peer" : " peers") + " · NAT " + s.nat +
      (s.relays.length ? " · " + s.relays.length + " relay" + (s.relays.length > 1 ? "s" : "") : "");
  } catch (e) {
    $("status").textContent = e.message;
  }
}

// One event of the stream (docs/http-api.md): what it is, its data.
function onEvent(name, data) {
  if (name === "message") {
    const m = JSON.parse(data);
    if (addMessage(m)) {
      const key = convKey(m);
      if (key.startsWith("ch:") && !channelOf(key)) loadChannels().catch(() => {});
      if (S.current === key) rerenderMessages(); else renderSide();
    }
  } else if (name === "delivery") {
    const d = JSON.parse(data);
    const m = S.byMsg.get(S.me.uuid + "/" + d.msg_id);
    if (!m) return;
    m.status = d.status;
    m.detail = d.detail;
    const shown = document.querySelector('[data-msg="' + CSS.escape(msgKey(m)) + '"] .meta');
    if (shown) {
      const old = shown.querySelector(".state");
      const now = stateWords(m);
      if (old) old.replaceWith(now); else shown.append(now);
    }
  } else if (name === "requests") {
    S.requests = JSON.parse(data);
    renderPrompts();
  } else if (name === "lagged") {
    reloadAll().catch(() => {});
  } else if (name === "error") {
    // The node holds no such message: start again from now.
    S.lastId = null;
    throw new Error("restart");
  }
}

// The event stream, read with fetch so the token goes as a header (EventSource cannot send
// one); after a break it resumes with Last-Event-ID, as EventSource would.
async function listen() {
  for (;;) {
    try {
      const headers = { Authorization: "Bearer " + S.token, Accept: "text/event-stream" };
      if (S.lastId) headers["Last-Event-ID"] = S.lastId;
      const res = await fetch(API + "/events", { headers });
      if (!res.ok || !res.body) throw new Error("refused");
      refreshStatus();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { name: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (ev.data.length) {
              if (ev.id) S.lastId = ev.id;
              onEvent(ev.name, ev.data.join("\n"));
            }
            ev = { name: "message", data: [], id: null };
          } else if (line.startsWith(":")) {
            // a keep-alive comment
          } else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") ev.name = val;
            else if (field === "data") ev.data.push(val);
            else if (field === "id") ev.id = val;
          }
        }
      }
    } catch (e) {
      // The node stopped or the stream broke: try again shortly.
    }
    $("status").textContent = "reconnecting to your node…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function reloadAll() {
  await loadHistory();
  if (S.current) rerenderMessages();
  renderSide();
}

function noToken(words) {
  $("main").replaceChildren(el("section", { class: "pane" }, el("h2", {}, "Open the app from your node"),
    el("p", {}, words),
    el("p", {}, "Run ", el("code", {}, "ptpchat ui"), " in a terminal and open the address it prints: it carries the key that lets this page in.")));
  $("app").classList.add("in-main");
  $("status").textContent = "not signed in";
}

async function start() {
  const m = /(?:^#|&)token=([0-9a-f]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("ptpchat.token", m[1]);
    history.replaceState(null, "", location.pathname);
  }
  S.token = sessionStorage.getItem("ptpchat.token");
  if (!S.token) return noToken("This page has no key to your node.");
  try {
    S.me = (await api("GET", "/id")).data;
  } catch (e) {
    if (e.status === 401) sessionStorage.removeItem("ptpchat.token");
    return noToken(e.status === 401 ? "The key this page holds is not your node's." : e.message);
  }
  $("nav-me").addEventListener("click", showMe);
  $("nav-add").addEventListener("click", () => showAddContact());
  $("nav-channels").addEventListener("click", showChannels);
  $("nav-node").addEventListener("click", showNode);
  $("back").addEventListener("click", () => { $("app").classList.remove("in-main"); S.current = null; renderSide(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && S.current) { $("app").classList.remove("in-main"); $("side").querySelector("button").focus(); }
  });
  await Promise.all([loadContacts(), loadChannels(), loadHistory()]);
  renderSide();
  showMe();
  $("app").classList.remove("in-main");
  refreshStatus();
  setInterval(refreshStatus, 10000);
  setInterval(() => loadChannels().catch(() => {}), 15000);
  listen();
  try { S.requests = (await api("GET", "/requests")).data; renderPrompts(); } catch (e) { /* the stream brings them */ }
}

start();
