// Verifies a report bundle in the browser, independently of the server's rendering:
//  1. the DSSE signature (Ed25519 over PAE(payloadType, payload)) with the bundle's key,
//     whose key id (SHA-256 of the raw key) must match the signature's keyid;
//  2. the signed checkpoint of the transparency log (same key, checkpoint payload type);
//  3. the RFC 9162 inclusion proof of leaf SHA-256(0x00 || canonical_json(envelope)) at the
//     bundle's index up to the checkpoint's root;
//  4. that the figures this page shows are those of the signed payload.
// "Signature verified" is written only when every check computed here passed.
"use strict";
(function () {
  var REPORT_TYPE = "application/vnd.audit-appliance.report+json";
  var CHECKPOINT_TYPE = "application/vnd.audit-appliance.checkpoint+json";
  var box = document.getElementById("verify");
  if (!box) { return; }
  var statusEl = document.getElementById("verify-status");
  var steps = document.getElementById("verify-steps");
  var enc = new TextEncoder();
  var subtle = window.crypto && window.crypto.subtle;

  function step(ok, text) {
    var li = document.createElement("li");
    li.className = ok ? "ok" : "bad";
    li.textContent = (ok ? "\u2713 " : "\u2717 ") + text;
    steps.appendChild(li);
  }
  function fail(reason) {
    statusEl.className = "bad";
    statusEl.textContent = "This report does NOT verify: " + reason;
    box.dataset.result = "failed";
  }
  function b64(text) {
    if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
      throw new Error("not base64");
    }
    var raw = atob(text);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out;
  }
  function concat(parts) {
    var n = parts.reduce(function (s, p) { return s + p.length; }, 0);
    var out = new Uint8Array(n), at = 0;
    parts.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }
  function hex(bytes) {
    return Array.prototype.map.call(new Uint8Array(bytes), function (b) {
      return b.toString(16).padStart(2, "0");
    }).join("");
  }
  function unhex(text) {
    if (!/^[0-9a-f]{64}$/.test(text)) { throw new Error("not a 32-byte hex hash"); }
    var out = new Uint8Array(32);
    for (var i = 0; i < 32; i++) { out[i] = parseInt(text.substr(2 * i, 2), 16); }
    return out;
  }
  function sha256(bytes) { return subtle.digest("SHA-256", bytes).then(function (d) { return new Uint8Array(d); }); }
  // DSSE v1 pre-authentication encoding; lengths are byte counts
  function pae(type, payload) {
    var t = enc.encode(type);
    return concat([enc.encode("DSSEv1 " + t.length + " "), t, enc.encode(" " + payload.length + " "), payload]);
  }
  // sorted keys, no whitespace: the appliance's canonical JSON for the values a bundle holds
  function canonical(value) {
    if (Array.isArray(value)) { return "[" + value.map(canonical).join(",") + "]"; }
    if (value !== null && typeof value === "object") {
      return "{" + Object.keys(value).sort().map(function (k) {
        return JSON.stringify(k) + ":" + canonical(value[k]);
      }).join(",") + "}";
    }
    return JSON.stringify(value);
  }
  function pemToSpki(pem) {
    var body = pem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, "").replace(/\s+/g, "");
    return b64(body);
  }
  function verifyEnvelope(key, keyId, envelope, type) {
    if (envelope.payloadType !== type) { return Promise.reject(new Error("wrong payload type " + envelope.payloadType)); }
    var payload = b64(envelope.payload);
    var sigs = (envelope.signatures || []).filter(function (s) { return s.keyid === keyId; });
    if (!sigs.length) { return Promise.reject(new Error("no signature by key " + keyId.slice(0, 16))); }
    return Promise.all(sigs.map(function (s) {
      return subtle.verify({ name: "Ed25519" }, key, b64(s.sig), pae(type, payload));
    })).then(function (results) {
      if (results.indexOf(true) < 0) { throw new Error("the Ed25519 signature does not match the content"); }
      return payload;
    });
  }
  function nodeHash(left, right) { return sha256(concat([new Uint8Array([1]), left, right])); }
  // RFC 9162 section 2.1.3.2
  function rootFromInclusion(leaf, index, size, proof) {
    if (!(index >= 0 && index < size)) { return Promise.reject(new Error("index outside the tree")); }
    var fn = index, sn = size - 1, result = Promise.resolve(leaf);
    proof.forEach(function (siblingHex) {
      result = result.then(function (r) {
        if (sn === 0) { throw new Error("inclusion proof too long"); }
        var sibling = unhex(siblingHex), next;
        if ((fn & 1) || fn === sn) {
          next = nodeHash(sibling, r);
          if (!(fn & 1)) { while (fn && !(fn & 1)) { fn >>= 1; sn >>= 1; } }
        } else {
          next = nodeHash(r, sibling);
        }
        fn >>= 1; sn >>= 1;
        return next;
      });
    });
    return result.then(function (r) {
      if (sn !== 0) { throw new Error("inclusion proof too short"); }
      return r;
    });
  }

  function run(bundle) {
    var envelope = bundle.envelope, log = bundle.log, key, keyId, report;
    var spki = pemToSpki(bundle.public_key);
    return subtle.importKey("spki", spki, { name: "Ed25519" }, false, ["verify"])
      .then(function (k) {
        key = k;
        return sha256(spki.slice(spki.length - 32));
      })
      .then(function (digest) {
        keyId = hex(digest);
        return verifyEnvelope(key, keyId, envelope, REPORT_TYPE);
      })
      .then(function (payload) {
        report = JSON.parse(new TextDecoder().decode(payload));
        step(true, "Signature verified: the report was signed by key " + keyId.slice(0, 16) + "\u2026 and not changed since.");
        return verifyEnvelope(key, keyId, log.checkpoint, CHECKPOINT_TYPE);
      })
      .then(function (payload) {
        var cp = JSON.parse(new TextDecoder().decode(payload));
        if (cp.tree_size !== log.tree_size) { throw new Error("the proof is for another tree size than the checkpoint"); }
        step(true, "Checkpoint signature verified: log " + cp.origin + " of size " + cp.tree_size + ".");
        return sha256(concat([new Uint8Array([0]), enc.encode(canonical(envelope))]))
          .then(function (leaf) { return rootFromInclusion(leaf, log.index, log.tree_size, log.inclusion_proof); })
          .then(function (root) {
            if (hex(root) !== cp.root_hash) { throw new Error("the inclusion proof does not lead to the checkpoint's root"); }
            step(true, "Inclusion proof verified: entry " + log.index + " of the transparency log, root " + cp.root_hash.slice(0, 16) + "\u2026");
          });
      })
      .then(function () {
        var shown = box.dataset;
        var same = report.id === shown.reportId &&
          String(report.verdict === null ? "" : report.verdict) === shown.verdict &&
          (shown.pValue === "" ? report.p_value === null : Number(shown.pValue) === report.p_value);
        if (!same) { throw new Error("the figures on this page differ from the signed report"); }
        step(true, "The id, verdict and p-value on this page are those of the signed report.");
        statusEl.className = "ok";
        statusEl.textContent = "Signature verified \u2014 and the report is in the transparency log.";
        box.dataset.result = "verified";
      });
  }

  if (!subtle) { fail("this browser offers no WebCrypto here (use https or localhost)."); return; }
  fetch(box.dataset.bundleUrl, { credentials: "same-origin", cache: "no-store" })
    .then(function (resp) {
      if (!resp.ok) { throw new Error("the bundle could not be fetched (HTTP " + resp.status + ")"); }
      return resp.json();
    })
    .then(run)
    .catch(function (err) { step(false, err.message); fail(err.message); });
})();
