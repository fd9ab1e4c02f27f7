// The tinylm playground: talks to this server's own OpenAI-style API (no other origin, no
// libraries). Completion and chat output arrive as server-sent events read from fetch().
"use strict";

const $ = (id) => document.getElementById(id);
let modelName = "tinylm";
let controller = null; // the running request's AbortController (the stop buttons use it)
const history = []; // chat: [{role, content}]

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function settings() {
  const s = {
    model: modelName,
    temperature: Number($("temperature").value),
    top_k: Math.trunc(Number($("top_k").value)),
    top_p: Number($("top_p").value),
    max_tokens: Math.trunc(Number($("max_tokens").value)),
    stream: true,
  };
  if ($("seed").value !== "") s.seed = Math.trunc(Number($("seed").value));
  return s;
}

// POST body to path and call onPiece(text) for every streamed piece; resolves with the
// finish reason ("stop", "length", or "stopped" when the user pressed stop).
async function stream(path, body, onPiece) {
  controller = new AbortController();
  let reason = null;
  try {
    const res = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) {
      let msg = res.status + " " + res.statusText;
      try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return reason;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const c of chunk.choices || []) {
            const text = c.text !== undefined ? c.text : (c.delta && c.delta.content) || "";
            if (text) onPiece(text);
            if (c.finish_reason) reason = c.finish_reason;
          }
        }
      }
    }
    return reason;
  } catch (e) {
    if (e.name === "AbortError") return "stopped";
    throw e;
  } finally {
    controller = null;
  }
}

function busy(on, ids) {
  for (const id of ids.go) $(id).disabled = on;
  for (const id of ids.stop) $(id).disabled = !on;
}

async function generate() {
  const prompt = $("prompt").value;
  const out = $("output");
  out.textContent = "";
  out.classList.remove("error");
  if (!prompt) { $("status").textContent = "type a prompt first"; return; }
  $("status").textContent = "generating...";
  busy(true, { go: ["generate"], stop: ["stop"] });
  try {
    const reason = await stream("/v1/completions", { ...settings(), prompt }, (t) => { out.textContent += t; });
    $("status").textContent = "done (" + (reason || "end") + ")";
  } catch (e) {
    out.classList.add("error");
    out.textContent = e.message;
    $("status").textContent = "error";
  } finally {
    busy(false, { go: ["generate"], stop: ["stop"] });
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("transcript").appendChild(div);
  return div;
}

async function ask() {
  const q = $("question").value.trim();
  if (!q) return;
  $("question").value = "";
  bubble("user", q);
  history.push({ role: "user", content: q });
  const answer = bubble("assistant", "");
  $("chat-status").textContent = "answering...";
  busy(true, { go: ["ask"], stop: ["chat-stop"] });
  try {
    const reason = await stream("/v1/chat/completions", { ...settings(), messages: history },
                                (t) => { answer.textContent += t; });
    history.push({ role: "assistant", content: answer.textContent });
    $("chat-status").textContent = "done (" + (reason || "end") + ")";
  } catch (e) {
    history.pop();
    answer.classList.add("error");
    answer.textContent = e.message;
    $("chat-status").textContent = "error";
  } finally {
    busy(false, { go: ["ask"], stop: ["chat-stop"] });
  }
}

function mode(chat) {
  $("complete-pane").hidden = chat;
  $("chat-pane").hidden = !chat;
  $("mode-complete").classList.toggle("active", !chat);
  $("mode-chat").classList.toggle("active", chat);
}

// ---- the model card and its training curve

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : v.toPrecision(4);
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => k + ": " + fmt(x)).join(", ");
  return String(v);
}

function showCard(card) {
  const dl = $("card-list");
  dl.textContent = "";
  for (const [k, v] of Object.entries(card || {})) {
    const dt = document.createElement("dt");
    dt.textContent = k.replace(/_/g, " ");
    const dd = document.createElement("dd");
    dd.textContent = fmt(v);
    dl.append(dt, dd);
  }
  if (card && card.name) $("model-name").textContent = card.name;
}

function drawCurve(metrics) {
  const canvas = $("curve");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = { l: 44, r: 10, t: 10, b: 28 };
  ctx.clearRect(0, 0, W, H);
  const series = [["train", "#2f6fdf", metrics.train || []], ["val", "#e8590c", metrics.eval || []]];
  const all = series.flatMap((s) => s[2]);
  if (!all.length) { $("curve-note").textContent = "no training metrics beside this model"; return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r);
  const Y = (y) => H - pad.b - (y - y0) / (y1 - y0) * (H - pad.t - pad.b);
  ctx.strokeStyle = "#d6dae1"; ctx.fillStyle = "#6b7280"; ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, H - pad.b); ctx.lineTo(W - pad.r, H - pad.b); ctx.stroke();
  ctx.fillText(y1.toFixed(2), 4, pad.t + 8); ctx.fillText(y0.toFixed(2), 4, H - pad.b);
  ctx.fillText("step " + x0, pad.l, H - 8); ctx.fillText(String(x1), W - pad.r - 30, H - 8);
  let legend = pad.l + 8;
  for (const [name, color, pts] of series) {
    if (!pts.length) continue;
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1.5;
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.stroke();
    if (pts.length === 1) ctx.fillRect(X(pts[0][0]) - 2, Y(pts[0][1]) - 2, 4, 4);
    ctx.fillText(name + " loss", legend, pad.t + 10);
    legend += 70;
  }
  $("curve-note").textContent = (metrics.train || []).length + " train points, " + (metrics.eval || []).length + " validation points";
}

async function loadCard() {
  try {
    const res = await fetch("/card", { headers: headers() });
    if (!res.ok) { $("curve-note").textContent = "card: " + res.status + " (API key?)"; return; }
    const data = await res.json();
    showCard(data.card);
    drawCurve(data.metrics || {});
    const models = await fetch("/v1/models", { headers: headers() });
    if (models.ok) modelName = (await models.json()).data[0].id;
  } catch (e) {
    $("curve-note").textContent = "card unavailable: " + e.message;
  }
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("chat-stop").addEventListener("click", () => controller && controller.abort());
$("ask").addEventListener("click", ask);
$("question").addEventListener("keydown", (e) => { if (e.key === "Enter") ask(); });
$("clear").addEventListener("click", () => { history.length = 0; $("transcript").textContent = ""; });
$("mode-complete").addEventListener("click", () => mode(false));
$("mode-chat").addEventListener("click", () => mode(true));
$("api_key").addEventListener("change", loadCard);
loadCard();
