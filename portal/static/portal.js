// fedcredit portal: WebAuthn ceremonies and in-browser proof checks. No inline script
// anywhere (the CSP allows scripts from the portal only); no framework beyond htmx.
"use strict";
(() => {
  const enc = new TextEncoder();
  const csrf = () => document.querySelector("meta[name=csrf-token]").content;

  const b64u = (bytes) =>
    btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

  function show(msg, ok) {
    const el = document.getElementById("result");
    if (el) {
      el.textContent = msg;
      el.dataset.ok = ok ? "1" : "0";
    }
  }

  async function postJSON(url, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body),
    });
    const j = await r.json().catch(() => ({ error: "HTTP_" + r.status, message: r.statusText }));
    if (!r.ok) throw j;
    return j;
  }

  async function sha256(...parts) {
    const n = parts.reduce((a, p) => a + p.length, 0);
    const buf = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      buf.set(p, o);
      o += p.length;
    }
    return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
  }

  // The challenge must be SHA-256 of the very statement this page received: the passkey
  // then signs exactly these terms, whatever the server claims.
  async function signStatement(statement, optionsJson) {
    const opts = JSON.parse(optionsJson);
    const digest = await sha256(enc.encode(statement));
    if (b64u(digest) !== opts.challenge) {
      throw { error: "CHALLENGE_MISMATCH", message: "the challenge does not commit to the statement shown" };
    }
    const cred = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(opts) });
    return JSON.stringify(cred.toJSON());
  }

  async function createPasskey(optionsJson) {
    const opts = PublicKeyCredential.parseCreationOptionsFromJSON(JSON.parse(optionsJson));
    const cred = await navigator.credentials.create({ publicKey: opts });
    return JSON.stringify(cred.toJSON());
  }

  const fail = (e) => show((e && (e.message || e.error)) || String(e), false);
  const formData = (form) => Object.fromEntries(new FormData(form).entries());

  async function onSignIn(form) {
    const c = await postJSON("/signin/begin", formData(form));
    const r = await postJSON("/signin/finish", { assertion: await signStatement(c.statement, c.options) });
    location.assign(r.redirect);
  }

  async function onEnrol(form) {
    const c = await postJSON("/enrol/begin", formData(form));
    const r = await postJSON("/enrol/finish", { credential: await createPasskey(c.options) });
    location.assign(r.redirect);
  }

  async function onAddPasskey(form) {
    const c = await postJSON("/challenge", { action: "add_passkey" });
    const assertion = await signStatement(c.statement, c.options);
    const o = await postJSON("/passkeys/add", { assertion, label: form.elements.label.value });
    const r = await postJSON("/enrol/finish", { credential: await createPasskey(o.options) });
    location.assign(r.redirect);
  }

  async function onIssueCode(form) {
    const c = await postJSON("/challenge", { action: "issue_enrol_code", ...formData(form) });
    const r = await postJSON("/operator/enrol", { assertion: await signStatement(c.statement, c.options) });
    const out = document.getElementById("code");
    out.textContent = `${r.org} (${r.role}): ${r.code}`;
    out.dataset.code = r.code;
    show("", true);
  }

  // Activating a model changes every bank's scores: the operator's passkey signs a
  // statement naming the version and the one it replaces (step-up), checked by the consent
  // service and, through the ticket it answers, by the coordinator.
  async function onActivate(form) {
    const f = formData(form);
    const c = await postJSON("/challenge", { action: "activate_model", model_version: f.version, model_replaces: f.replaces });
    const r = await postJSON("/operator/models/activate", { ...f, assertion: await signStatement(c.statement, c.options) });
    location.assign(r.redirect);
  }

  async function onDecide(b) {
    const body = { action: b.dataset.decide, consent_id: b.dataset.consentId };
    if (b.dataset.removeCategory) body.remove_categories = [b.dataset.removeCategory];
    const c = await postJSON("/challenge", body);
    const r = await postJSON("/decide", { assertion: await signStatement(c.statement, c.options) });
    sessionStorage.setItem("fc-result", r.state + " · sha256 " + r.assertion_sha256);
    location.reload();
  }

  async function onRemovePasskey(b) {
    const c = await postJSON("/challenge", { action: "remove_passkey", credential_id: b.dataset.passkeyRemove });
    const r = await postJSON("/passkeys/remove", { assertion: await signStatement(c.statement, c.options) });
    location.assign(r.redirect);
  }

  // --- RFC 9162 inclusion proofs and the C2SP signed-note checkpoint ---------------------

  const leafHash = (data) => sha256(Uint8Array.of(0), data);
  const nodeHash = (l, r) => sha256(Uint8Array.of(1), l, r);

  // RFC 9162 §2.1.3.2 (arithmetic, not bit operators: sizes beyond 2^31 stay exact).
  async function rootFromInclusion(index, size, leaf, proof) {
    if (index >= size) throw new Error("index beyond the tree");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of proof) {
      if (sn === 0) throw new Error("proof too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) {
            fn = Math.floor(fn / 2);
            sn = Math.floor(sn / 2);
          }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("proof too short");
    return r;
  }

  // A signed-note verifier key name+keyhash+base64(type || key) (c2sp.org/signed-note):
  // `type` 0x01 for a log key, 0x04 for a witness's cosignature/v1 key.
  async function parseVkey(vkey, type) {
    // split at the first two '+' only (base64 itself may hold '+').
    const i = vkey.indexOf("+"), j = vkey.indexOf("+", i + 1);
    if (i < 0 || j < 0) throw new Error("not a verifier key");
    const name = vkey.slice(0, i), keyHash = vkey.slice(i + 1, j);
    const raw = unb64(vkey.slice(j + 1));
    if (raw[0] !== type || raw.length !== 33) throw new Error(`not an Ed25519 key of type ${type}`);
    const kid = (await sha256(enc.encode(name + "\n"), raw)).slice(0, 4);
    if (hex(kid) !== keyHash) throw new Error("key hash mismatch");
    const key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
    return { name, keyHash, key };
  }

  // The note's text and its signature lines as [name, bytes] (key id first).
  function splitNote(note) {
    const split = note.lastIndexOf("\n\n");
    if (split < 0) throw new Error("not a signed note");
    const sigs = [];
    for (const line of note.slice(split + 2).split("\n")) {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (m) sigs.push([m[1], unb64(m[2])]);
    }
    return { text: note.slice(0, split + 1), sigs };
  }

  // A checkpoint note signed by the log key `vkey`.
  async function verifyCheckpoint(note, vkey) {
    const { text, sigs } = splitNote(note);
    const { name, keyHash, key } = await parseVkey(vkey, 1);
    for (const [who, sig] of sigs) {
      if (who !== name || hex(sig.slice(0, 4)) !== keyHash) continue;
      if (await crypto.subtle.verify({ name: "Ed25519" }, key, sig.slice(4), enc.encode(text))) {
        const lines = text.split("\n");
        return { origin: lines[0], size: Number(lines[1]), root: unb64(lines[2]) };
      }
    }
    throw new Error("no valid log signature on the checkpoint");
  }

  // One witness's cosignature on the note (c2sp.org/tlog-cosignature v1): a line under the
  // witness's name and key id holding u64 timestamp || Ed25519 signature over
  // "cosignature/v1\ntime <timestamp>\n" || note text. {status: verified|failed|missing, time}.
  async function verifyCosignature(note, vkey) {
    const { text, sigs } = splitNote(note);
    const { name, keyHash, key } = await parseVkey(vkey, 4);
    const mine = sigs.filter(([who, sig]) => who === name && hex(sig.slice(0, 4)) === keyHash);
    if (mine.length === 0) return { status: "missing", time: null };
    for (const [, sig] of mine) {
      if (sig.length !== 4 + 8 + 64) continue;
      const ts = new DataView(sig.buffer, sig.byteOffset + 4, 8).getBigUint64(0);
      const msg = enc.encode(`cosignature/v1\ntime ${ts}\n${text}`);
      if (await crypto.subtle.verify({ name: "Ed25519" }, key, sig.slice(12), msg)) {
        return { status: "verified", time: Number(ts) };
      }
    }
    return { status: "failed", time: null };
  }

  // The newest signed checkpoint (its log signature checked here too) against the cosigned
  // one shown: how far the witnesses are behind.
  async function showNewest(doc, cp, words) {
    const el = document.getElementById("newest-status");
    if (!el) return;
    try {
      const newest = doc.newest ? await verifyCheckpoint(doc.newest, doc.log_key) : cp;
      if (!cp || !newest || newest.origin !== cp.origin) throw new Error("not the same log");
      const behind = newest.size - cp.size;
      el.dataset.status = behind > 0 ? "behind" : "verified";
      el.dataset.size = String(newest.size);
      const size = `${words.dataset.sizeWord} ${newest.size}`;
      el.textContent = behind > 0 ? `${size}: ${behind} ${words.dataset.behind}` : `${size}, ${words.dataset.same}`;
    } catch (e) {
      el.dataset.status = "failed";
      el.textContent = words.dataset.failed;
      el.title = String(e.message || e);
    }
  }

  async function showCosignatures(doc, words) {
    let good = 0;
    for (const vkey of doc.witness_keys || []) {
      let got = { status: "failed", time: null };
      const name = vkey.slice(0, vkey.indexOf("+"));
      try {
        got = await verifyCosignature(doc.checkpoint, vkey);
      } catch (e) {
        got.error = String(e.message || e);
      }
      const row = document.querySelector(`#witnesses tr[data-witness="${CSS.escape(name)}"]`);
      if (!row) continue;
      const cell = row.querySelector(".cosig");
      cell.dataset.status = got.status;
      cell.textContent = words.dataset[got.status];
      if (got.error) cell.title = got.error;
      if (got.time !== null) row.querySelector(".cosig-time").textContent = new Date(got.time * 1000).toISOString().replace("T", " ").slice(0, 19);
      if (got.status === "verified") good += 1;
    }
    return good;
  }

  function mark(el, ok, words) {
    el.dataset.status = ok ? "verified" : "failed";
    el.textContent = ok ? words.dataset.verified : words.dataset.failed;
  }

  async function verifyAccessLog() {
    const holder = document.getElementById("proofs");
    if (!holder) return;
    const t0 = performance.now();
    const doc = JSON.parse(holder.textContent);
    const words = document.getElementById("words");
    const cpEl = document.getElementById("checkpoint-status");
    let cp = null;
    try {
      cp = await verifyCheckpoint(doc.checkpoint, doc.log_key);
      if (cp.size !== doc.tree_size) throw new Error("checkpoint size mismatch");
      mark(cpEl, true, words);
    } catch (e) {
      mark(cpEl, false, words);
      cpEl.title = String(e.message || e);
    }
    const cells = new Map(Array.from(document.querySelectorAll("#access-log tr[data-index]"), (tr) => [Number(tr.dataset.index), tr.querySelector(".proof")]));
    await Promise.all(doc.entries.map(async (e) => {
      const cell = cells.get(e.index);
      if (!cell) return;
      try {
        const root = await rootFromInclusion(e.index, doc.tree_size, await leafHash(enc.encode(e.data)), e.proof.map(unb64));
        mark(cell, cp !== null && hex(root) === hex(cp.root), words);
      } catch (err) {
        mark(cell, false, words);
      }
    }));
    document.body.dataset.verifiedMs = String(Math.round(performance.now() - t0));
    document.body.dataset.proofsDone = "1";
  }

  // RFC 9162 §2.1.4.2: does the tree of size `second` (root secondHash) extend the one of
  // size `first` (root firstHash)? Arithmetic shifts, as above.
  async function verifyConsistency(first, second, firstHash, secondHash, proof) {
    if (first > second) return false;
    if (first === second) return proof.length === 0 && hex(firstHash) === hex(secondHash);
    if (first === 0 || proof.length === 0) return false;
    let path = proof;
    if (Number.isInteger(Math.log2(first))) path = [firstHash, ...proof]; // first = 2^k
    let fn = first - 1, sn = second - 1;
    while (fn % 2 === 1) {
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    let fr = path[0], sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) {
            fn = Math.floor(fn / 2);
            sn = Math.floor(sn / 2);
          }
        }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 && hex(fr) === hex(firstHash) && hex(sr) === hex(secondHash);
  }

  const SAVED = "fc-saved-checkpoint";

  async function auditPage() {
    const holder = document.getElementById("checkpoint");
    if (!holder) return;
    const doc = JSON.parse(holder.textContent);
    const words = document.getElementById("words");
    const status = document.getElementById("cp-status");
    const cons = document.getElementById("consistency-status");
    let cp = null;
    try {
      cp = await verifyCheckpoint(doc.checkpoint, doc.log_key);
      mark(status, true, words);
    } catch (e) {
      mark(status, false, words);
      status.title = String(e.message || e);
    }
    await showNewest(doc, cp, words);
    // each cosignature is checked on its own; the quorum counts only on a checkpoint whose
    // log signature verified
    const good = await showCosignatures(doc, words);
    const q = document.getElementById("quorum-status");
    const total = (doc.witness_keys || []).length;
    const met = cp !== null && good >= doc.quorum;
    q.dataset.status = met ? "verified" : "failed";
    q.dataset.good = String(good);
    q.textContent = `${good} / ${total} (≥ ${doc.quorum}) ${met ? words.dataset.met : words.dataset.notMet}`;
    const saved = JSON.parse(localStorage.getItem(SAVED) || "null");
    if (saved) document.getElementById("saved").textContent = `size ${saved.size}, root ${saved.root}`;
    if (cp && saved && saved.origin === cp.origin) {
      let ok = false;
      if (saved.size === cp.size) {
        ok = saved.root === b64u(cp.root);
      } else if (saved.size < cp.size) {
        const r = await fetch(`/audit/consistency?old=${saved.size}&new=${cp.size}`, { headers: { Accept: "application/json" } });
        const j = await r.json();
        const rootOf = (s) => unb64(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
        ok = r.ok && (await verifyConsistency(saved.size, cp.size, rootOf(saved.root), cp.root, j.proof.map(unb64)));
      }
      mark(cons, ok, words);
    }
    document.getElementById("save-checkpoint").addEventListener("click", () => {
      if (!cp) return;
      localStorage.setItem(SAVED, JSON.stringify({ origin: cp.origin, size: cp.size, root: b64u(cp.root) }));
      location.reload();
    });
    document.body.dataset.auditDone = "1";
  }

  document.addEventListener("submit", (ev) => {
    const form = ev.target.closest("form[data-webauthn]");
    if (!form) return;
    ev.preventDefault();
    const run = { signin: onSignIn, enrol: onEnrol, add: onAddPasskey, issue: onIssueCode, activate: onActivate }[form.dataset.webauthn];
    run(form).catch(fail);
  });

  document.addEventListener("click", (ev) => {
    const decide = ev.target.closest("[data-decide]");
    if (decide) onDecide(decide).catch(fail);
    const remove = ev.target.closest("[data-passkey-remove]");
    if (remove) onRemovePasskey(remove).catch(fail);
  });

  document.addEventListener("DOMContentLoaded", () => {
    const msg = sessionStorage.getItem("fc-result");
    if (msg) {
      sessionStorage.removeItem("fc-result");
      show(msg, true);
    }
    verifyAccessLog().catch(fail);
    auditPage().catch(fail);
  });

  // htmx requests carry the CSRF token too.
  document.addEventListener("htmx:configRequest", (ev) => {
    ev.detail.headers["X-CSRF-Token"] = csrf();
  });
})();
