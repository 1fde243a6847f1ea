// The station page: camera or photo -> /api/predict; feedback, teaching and knowledge -> write endpoints.
"use strict";
const $ = (id) => document.getElementById(id);
let lastImage = null;      // the Blob shown and predicted last
let lastPrediction = null;
let liveTimer = null;
let busy = false;

// The token lives only as long as this tab (sessionStorage); older pages kept it in localStorage: drop it.
localStorage.removeItem("edgelearn-token");
$("token").value = sessionStorage.getItem("edgelearn-token") || "";
$("user").value = localStorage.getItem("edgelearn-user") || "";
$("token").addEventListener("change", () => {
  sessionStorage.setItem("edgelearn-token", $("token").value.trim());
  refresh().then(() => say("")).catch((err) => say(err.message, true));
});
$("user").addEventListener("change", () => localStorage.setItem("edgelearn-user", $("user").value.trim()));

// Every request carries the token when one is entered: reads may need it too.
function authorised(headers = {}) {
  const token = $("token").value.trim();
  return token ? { ...headers, Authorization: "Bearer " + token } : headers;
}

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function api(path, { method = "GET", form = null } = {}) {
  const headers = authorised();
  if (method !== "GET" && $("user").value.trim()) headers["X-User"] = $("user").value.trim();
  const response = await fetch(path, { method, body: form, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    let detail = body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(detail || response.statusText);
  }
  return body;
}

const pct = (x) => (100 * x).toFixed(1) + "%";

async function predict(blob, { enqueue = true } = {}) {
  const heat = $("want-heatmap").checked;
  const response = await fetch(`/api/predict?top_k=5&heatmap=${heat}&representatives=1&enqueue=${enqueue}`,
                               { method: "POST", body: blob, headers: authorised({ "Content-Type": blob.type || "image/jpeg" }) });
  const p = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(p.detail || response.statusText);
  lastImage = blob;
  lastPrediction = p;
  show(p);
  return p;
}

function show(p) {
  $("result-label").textContent = p.label ?? (p.known_classes ? "unknown" : "nothing learned yet");
  $("confidence").textContent = p.known_classes ? pct(p.confidence) : "";
  $("confidence-bar").value = p.confidence;
  $("alternatives").replaceChildren(...p.alternatives.map((a) => {
    const li = document.createElement("li");
    li.textContent = `${a.label} ${pct(a.confidence)}`;
    return li;
  }));
  $("heatmap").hidden = !p.heatmap;
  if (p.heatmap) $("heatmap").src = p.heatmap;
  $("representatives").replaceChildren(...p.representatives.map((r) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    loadImage(img, `/api/thumbnails/${r.thumbnail}`);
    img.alt = r.label;
    fig.append(img, document.createElement("br"), r.label);
    return fig;
  }));
  $("confirm").disabled = !p.label;
  $("correct").disabled = false;
}

// Images that need the token: an <img src> cannot send it, so fetch them and show a blob URL.
async function fetchBlob(path) {
  const response = await fetch(path, { headers: authorised() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.detail || response.statusText);
  }
  return response.blob();
}

function loadImage(img, path) {
  fetchBlob(path).then((blob) => {
    const url = URL.createObjectURL(blob);
    img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
    img.src = url;
  }).catch(() => { img.alt += " (no access)"; });
}

function showImage(blob) {
  $("shot").src = URL.createObjectURL(blob);
  $("shot").hidden = false;
}

async function learn(files, label, extra = {}) {
  const form = new FormData();
  for (const [name, file] of files) form.append("files", file, name);
  if (label) form.append("label", label);
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) form.append(k, v);
  const result = await api("/api/learn", { method: "POST", form });
  await refresh();
  return result;
}

// -- seeing ----------------------------------------------------------------------------------------
$("photo").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  showImage(file);
  try { await predict(file); say(""); } catch (err) { say(err.message, true); }
  e.target.value = "";
});

$("camera-start").addEventListener("click", async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    $("camera").srcObject = stream;
    $("camera").hidden = false;
    $("shot").hidden = true;
    $("live").disabled = false;
    $("live").checked = true;
    startLive();
  } catch (err) {
    say("no camera: " + err.message + " (uploads still work)", true);
  }
});

function grab() {
  const video = $("camera"), canvas = $("frame");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

function startLive() {
  clearInterval(liveTimer);
  liveTimer = setInterval(async () => {
    if (!$("live").checked || busy || !$("camera").videoWidth) return;
    busy = true;
    try { await predict(await grab()); } catch (err) { say(err.message, true); } finally { busy = false; }
  }, 500);
}
$("live").addEventListener("change", () => { if ($("live").checked) startLive(); });

// -- feedback --------------------------------------------------------------------------------------
$("confirm").addEventListener("click", async () => {
  if (!lastImage || !lastPrediction?.label) return;
  try {
    await learn([["confirmed.jpg", lastImage]], lastPrediction.label,
                { kind: "confirm", predicted: lastPrediction.label, confidence: lastPrediction.confidence });
    say(`learned: confirmed ${lastPrediction.label}`);
  } catch (err) { say(err.message, true); }
});

$("correct").addEventListener("click", async () => {
  const label = $("correct-label").value.trim();
  if (!lastImage || !label) { say("type the right class first", true); return; }
  const predicted = lastPrediction?.label ?? null;
  try {
    await learn([["corrected.jpg", lastImage]], label,
                { kind: predicted ? "correct" : "teach", predicted, confidence: lastPrediction?.confidence });
    $("correct-label").value = "";
    say(`learned: this is ${label}`);
    if (!$("live").checked) await predict(lastImage, { enqueue: false });
  } catch (err) { say(err.message, true); }
});

$("teach").addEventListener("click", async () => {
  const files = [...$("teach-files").files];
  if (!files.length) { say("choose images, a zip or a video first", true); return; }
  try {
    say(`teaching ${files.length} file(s)…`);
    const r = await learn(files.map((f) => [f.name, f]), $("teach-label").value.trim());
    say(`learned ${r.learned} image(s)`);
    $("teach-files").value = "";
  } catch (err) { say(err.message, true); }
});

// -- knowledge ---------------------------------------------------------------------------------------
$("consolidate").addEventListener("click", async () => {
  try { const r = await api("/api/consolidate", { method: "POST" }); say(`consolidated: version ${r.version}`); }
  catch (err) { say(err.message, true); }
  await refresh();
});

$("import-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("package", file, file.name);
  try { const r = await api("/api/knowledge", { method: "POST", form }); say(`merged knowledge from ${r.site}`); }
  catch (err) { say(err.message, true); }
  e.target.value = "";
  await refresh();
});

$("export").addEventListener("click", async (e) => {
  e.preventDefault();  // the export needs the token: download it with fetch, then save the blob
  try {
    const link = Object.assign(document.createElement("a"), { download: "knowledge.edge" });
    link.href = URL.createObjectURL(await fetchBlob("/api/knowledge"));
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (err) { say("export: " + err.message, true); }
});

async function rollback(version) {
  try { const r = await api(`/api/versions/${version}/rollback`, { method: "POST" }); say(`rolled back to version ${version} (now ${r.version})`); }
  catch (err) { say(err.message, true); }
  await refresh();
}

async function labelQueued(id, label) {
  const form = new FormData();
  if (label) form.append("label", label);
  try { await api(`/api/queue/${id}`, { method: "POST", form }); say(label ? `learned ${label}` : "dismissed"); }
  catch (err) { say(err.message, true); }
  await refresh();
}

// -- state -----------------------------------------------------------------------------------------
async function refresh() {
  const [status, versions, queue] = await Promise.all([api("/api/status"), api("/api/versions"), api("/api/queue?limit=20")]);
  $("status").textContent = `${status.classes.length} classes · ${status.examples} examples · version ${status.active_version} · ${status.learner}`;
  $("classes").replaceChildren(...status.classes.map((c) => Object.assign(document.createElement("option"), { value: c })));
  $("versions").tBodies[0].replaceChildren(...versions.versions.map((v) => {
    const tr = document.createElement("tr");
    if (v.id === versions.active) tr.className = "active";
    for (const text of [v.id, v.created_at.slice(0, 19).replace("T", " "), v.reason, v.classes]) {
      tr.append(Object.assign(document.createElement("td"), { textContent: text }));
    }
    const td = document.createElement("td");
    if (v.id !== versions.active) {
      const b = Object.assign(document.createElement("button"), { textContent: "roll back", className: "rollback" });
      b.dataset.version = v.id;
      b.addEventListener("click", () => rollback(v.id));
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
  $("queue").replaceChildren(...queue.items.map((item) => {
    const li = document.createElement("li");
    if (item.has_image) {
      const img = document.createElement("img");
      loadImage(img, `/api/queue/${item.id}/image`);
      li.append(img, " ");
    }
    li.append(`${item.predicted ?? "?"} ${pct(item.confidence)} `);
    const input = Object.assign(document.createElement("input"), { placeholder: "label" });
    input.setAttribute("list", "classes");
    const ok = Object.assign(document.createElement("button"), { textContent: "learn" });
    ok.addEventListener("click", () => labelQueued(item.id, input.value.trim()));
    const no = Object.assign(document.createElement("button"), { textContent: "dismiss" });
    no.addEventListener("click", () => labelQueued(item.id, null));
    li.append(input, " ", ok, " ", no);
    return li;
  }));
}

refresh().catch((err) => say(err.message, true));
