// The page imcap serve shows at GET /: choose or drop an image, see its captions (and, with an
// attention model, where each word looked). Everything inline, so that the binary is the server.
#include "cli/serve_http.hpp"

namespace imcap::cli {

const std::string& serve_web_page() {
  static const std::string page = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>imcap</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
h1{font-size:1.4em}#drop{border:2px dashed #888;border-radius:8px;padding:2em;text-align:center}
#drop.over{background:#eef}#preview{max-width:100%;max-height:24em;margin-top:1em;display:none}
ol#captions li{margin:.3em 0}.lp{color:#666;font-size:.9em;margin-left:.5em}
#error{color:#b00}.att{display:flex;flex-wrap:wrap;gap:8px;margin-top:1em}
figure{margin:0}figcaption{font-weight:bold;text-align:center}canvas{display:block}
label{margin-right:1em}small{color:#666}
</style></head><body>
<h1>imcap: image captioning</h1>
<p id="model">Loading the model's description...</p>
<form id="form">
<div id="drop">Drop an image here, or <input type="file" id="file" name="image" accept="image/*"></div>
<p><label>Beam <input type="number" id="beam" min="1" max="10" value="3" style="width:4em"></label>
<label>Captions <input type="number" id="num_return" min="1" max="10" value="3" style="width:4em"></label>
<label id="keylabel" style="display:none">API key <input type="password" id="key"></label></p>
</form>
<p id="status"></p><p id="error"></p>
<img id="preview" alt="the chosen image">
<ol id="captions"></ol>
<div id="attention" class="att"></div>
<p><small>GET /health, GET /metrics, POST /v1/caption: see docs/serve.md.</small></p>
<script>
"use strict";
const $ = id => document.getElementById(id);
let info = {attention: false, auth: false};
fetch("health").then(r => r.json()).then(h => {
  info = h;
  $("model").textContent = `Model ${h.model} (${h.encoder}, ${h.decoder} decoder, ` +
    `${h.vocab_size} words), imcap ${h.version}.`;
  $("beam").value = h.defaults.beam;
  $("num_return").value = Math.max(1, Math.min(3, h.defaults.beam));
  if (h.auth) $("keylabel").style.display = "";
}).catch(e => { $("model").textContent = "The server did not answer /health: " + e; });

function show(text, where) { $(where).textContent = text; }

function drawAttention(img, tokens, maps, grid) {
  const box = $("attention");
  box.textContent = "";
  const side = 160;
  tokens.forEach((word, i) => {
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = word;
    const c = document.createElement("canvas");
    c.width = side; c.height = side;
    const g = c.getContext("2d");
    // The centre crop the model saw.
    const s = Math.min(img.naturalWidth, img.naturalHeight);
    g.drawImage(img, (img.naturalWidth - s) / 2, (img.naturalHeight - s) / 2, s, s, 0, 0, side, side);
    const row = maps[i], top = Math.max(...row) || 1, cell = side / grid;
    for (let y = 0; y < grid; y++) for (let x = 0; x < grid; x++) {
      const w = row[y * grid + x] / top;
      g.fillStyle = `rgba(0,0,0,${(0.75 * (1 - w)).toFixed(3)})`;
      g.fillRect(x * cell, y * cell, cell, cell);
    }
    fig.append(cap, c);
    box.append(fig);
  });
}

async function caption(file) {
  show("", "error"); $("captions").textContent = ""; $("attention").textContent = "";
  const img = $("preview");
  img.src = URL.createObjectURL(file);
  img.style.display = "block";
  await img.decode().catch(() => {});
  const beam = $("beam").value, n = Math.min($("num_return").value, beam);
  const query = `beam=${beam}&num_return=${n}` + (info.attention ? "&attention=1" : "");
  const headers = {"Content-Type": file.type || "application/octet-stream"};
  if (info.auth) headers["Authorization"] = "Bearer " + $("key").value;
  show("Captioning...", "status");
  try {
    const r = await fetch("v1/caption?" + query, {method: "POST", headers, body: file});
    const body = await r.json();
    show("", "status");
    if (!r.ok) { show(`Error ${r.status}: ${body.error.message}`, "error"); return; }
    for (const c of body.captions) {
      const li = document.createElement("li");
      li.className = "caption";
      li.textContent = c.text;
      const lp = document.createElement("span");
      lp.className = "lp";
      lp.textContent = `log p = ${c.log_prob.toFixed(3)}`;
      li.append(lp);
      $("captions").append(li);
    }
    show(`${body.timing_ms.total.toFixed(1)} ms`, "status");
    const best = body.captions[0];
    if (best && best.attention && body.grid > 0) drawAttention(img, best.tokens, best.attention, body.grid);
  } catch (e) { show("", "status"); show("The request failed: " + e, "error"); }
}

$("file").addEventListener("change", e => { if (e.target.files.length) caption(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) caption(e.dataTransfer.files[0]);
});
</script></body></html>
)html";
  return page;
}

}  // namespace imcap::cli
