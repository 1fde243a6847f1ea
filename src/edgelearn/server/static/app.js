// The station page: camera or photo -> /api/predict; feedback, teaching, classes and knowledge -> write endpoints.
"use strict";
const $ = (id) => document.getElementById(id);
const element = (tag, props = {}, ...children) => {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
};
let lastImage = null;      // the Blob shown and predicted last
let lastPrediction = null;
let usedFor = null;        // the Blob whose feedback was given: Right/Correct count once per frame
let pending = false;       // a feedback request is on its way
let calibration = null;    // /api/status `calibration`
let classInfo = [];        // /api/classes, biggest first (the queue's number keys)
let liveTimer = null;
let busy = false;
let source = "browser";    // what "live" shows: the browser's camera, or the station's own ("station")
let stationFrameId = null; // the station camera's frame on screen

// The token lives only as long as this tab (sessionStorage); older pages kept it in localStorage: drop it.
localStorage.removeItem("edgelearn-token");
$("token").value = sessionStorage.getItem("edgelearn-token") || "";
$("user").value = localStorage.getItem("edgelearn-user") || "";
$("token").addEventListener("change", checkToken);
$("token-form").addEventListener("submit", (e) => { e.preventDefault(); checkToken(); });
$("user").addEventListener("change", () => localStorage.setItem("edgelearn-user", $("user").value.trim()));

// Every request carries the token when one is entered: reads may need it too.
function authorised(headers = {}) {
  const token = $("token").value.trim();
  return token ? { ...headers, Authorization: "Bearer " + token } : headers;
}

// -- messages, next to the control that caused them ---------------------------------------------------
function messageFor(near) {
  for (let node = near; node; node = node.parentElement) {
    const message = node.querySelector(":scope > .message");
    if (message) return message;
  }
  return $("message");
}

// One message at a time: a new one clears the others (an old "learned ..." would describe a state that
// an undo or a rollback has since changed).
function say(text, error = false, near = null) {
  const message = messageFor(near);
  if (text) for (const other of document.querySelectorAll(".message")) if (other !== message) other.textContent = "";
  message.textContent = text;
  message.classList.toggle("error", error);
}

// The same, after the control that caused it was rebuilt (a card, a version row): its message takes the
// keyboard focus, so that Tab goes on from there instead of from the top of the page.
function sayAfterRebuild(text, near) {
  say(text, false, near);
  if (document.activeElement !== document.body) return;
  const message = messageFor(near);
  message.tabIndex = -1;
  message.focus();
}

// A question asked next to `near`, answered with one of `choices` (its index) or Cancel/Escape (null);
// `field` (an input or select) goes with it and Enter picks the first choice.
function ask(near, question, choices, field = null) {
  const message = messageFor(near);
  message.parentElement.querySelector(":scope > .ask")?.cancel();
  message.textContent = "";  // the question replaces what was said there ("teaching…" is on hold)
  return new Promise((resolve) => {
    const form = element("form", { className: "ask row" }, element("span", { textContent: question }));
    form.setAttribute("role", "group");
    if (field) form.append(field);
    const answer = (choice) => { form.remove(); resolve(choice); near.focus?.(); };
    form.cancel = () => answer(null);
    choices.forEach((text, i) => {
      const b = element("button", { textContent: text, type: i ? "button" : "submit" });
      if (i) b.addEventListener("click", () => answer(i));
      form.append(b);
    });
    const cancel = element("button", { textContent: "Cancel", type: "button", className: "secondary" });
    cancel.addEventListener("click", () => answer(null));
    form.append(cancel);
    form.addEventListener("submit", (e) => { e.preventDefault(); answer(0); });
    form.addEventListener("keydown", (e) => {
      if (e.key === "Escape") answer(null);
      if (e.key === "Enter" && e.target.tagName === "SELECT") { e.preventDefault(); form.requestSubmit(); }
    });
    message.after(form);
    (field?.field ?? field ?? form.querySelector("button")).focus();
  });
}

// Server messages in the words of the page: the token is entered at the top, not sent as a header.
function plainWords(detail, status) {
  const text = String(detail).replace(/\s*\(Authorization: Bearer <token>\)/g, "");
  return status === 401 ? `${text}: enter it at the top of the page` : text;
}

class ApiError extends Error {
  constructor(message, status, body) { super(message); this.status = status; this.body = body; }
}

async function api(path, { method = "GET", form = null } = {}) {
  const headers = authorised();
  if (method !== "GET" && $("user").value.trim()) headers["X-User"] = $("user").value.trim();
  const response = await fetch(path, { method, body: form, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    let detail = body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new ApiError(plainWords(detail || response.statusText, response.status), response.status, body);
  }
  return body;
}

function formOf(fields) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) if (v !== null && v !== undefined && v !== "") form.append(k, v);
  return form;
}

const pct = (x) => (100 * x).toFixed(1) + "%";
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// -- the token ----------------------------------------------------------------------------------------
const ACCESS = {
  write: "token OK: you can teach",
  read: "token OK for looking only: teaching needs the station's token",
  none: "this token is not accepted: check it",
};

async function checkToken() {
  sessionStorage.setItem("edgelearn-token", $("token").value.trim());
  const state = $("token-state");
  state.className = "";
  if (!$("token").value.trim()) state.textContent = "no token: you can look, not teach";
  else {
    try { state.textContent = ACCESS[(await api("/api/token")).access] ?? ""; }
    catch (err) { state.textContent = err.status === 404 ? "" : ACCESS.none; }
    state.classList.toggle("error", state.textContent === ACCESS.none);
  }
  refresh().then(() => say("")).catch((err) => say(err.message, true));
}

// -- seeing -------------------------------------------------------------------------------------------
async function predict(blob, { enqueue = true } = {}) {
  const heat = $("want-heatmap").checked;
  const response = await fetch(`/api/predict?top_k=5&heatmap=${heat}&representatives=1&enqueue=${enqueue}`,
                               { method: "POST", body: blob, headers: authorised({ "Content-Type": blob.type || "image/jpeg" }) });
  const p = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(plainWords(p.detail || response.statusText, response.status), response.status, p);
  }
  lastImage = blob;
  lastPrediction = p;
  show(p);
  return p;
}

const isUnknown = (p) => p.unknown ?? (p.label === null && p.known_classes > 0);

function show(p) {
  const closest = p.alternatives[0];
  const nearest = closest ? `— closest: ${closest.label} ${Math.round(100 * closest.confidence)} %` : "";
  if (!p.known_classes) $("result-label").textContent = "nothing learned yet";
  else $("result-label").textContent = isUnknown(p) ? "unknown" : p.label;
  if (!p.known_classes) $("confidence").textContent = "";
  else $("confidence").textContent = isUnknown(p) ? nearest : pct(p.confidence);
  $("confidence-bar").value = p.confidence;
  $("bar-result").textContent = `${$("result-label").textContent} ${$("confidence").textContent}`;
  showCalibration();
  $("alternatives-hint").hidden = !p.alternatives.length;
  $("alternatives").replaceChildren(...p.alternatives.map((a) => {
    const b = element("button", { type: "button", className: "alternative",
                                  textContent: `${a.label} ${pct(a.confidence)}` });
    b.dataset.label = a.label;
    b.addEventListener("click", () => correctTo(a.label, $("correct")));
    return element("li", {}, b);
  }));
  $("heatmap").hidden = !p.heatmap;
  if (p.heatmap) $("heatmap").src = p.heatmap;
  $("representatives").replaceChildren(...p.representatives.map((r) => {
    const img = element("img", { alt: r.label });
    loadImage(img, `/api/thumbnails/${r.thumbnail}`);
    return element("figure", {}, img, element("br"), r.label);
  }));
  updateFeedback();
}

function showCalibration() {
  const c = calibration;
  $("calibration").hidden = !c || c.calibrated;
  if (c) $("calibration").textContent = `certainty not calibrated yet (${c.n}/${c.needed})`;
}

function updateFeedback() {
  const open = lastImage !== null && usedFor !== lastImage && !pending;
  $("confirm").disabled = !open || !lastPrediction?.label || isUnknown(lastPrediction);
  $("correct").disabled = !open;
  for (const b of $("alternatives").querySelectorAll("button")) b.disabled = !open;
}

async function refreshDecision() {  // after undo or rollback: what the station says now about the same image
  if (lastImage) await predict(lastImage, { enqueue: false });
}

// Images that need the token: an <img src> cannot send it, so fetch them and show a blob URL.
async function fetchBlob(path) {
  const response = await fetch(path, { headers: authorised() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(plainWords(body.detail || response.statusText, response.status));
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
  if ($("shot").src.startsWith("blob:")) URL.revokeObjectURL($("shot").src);  // a live camera shows many
  $("shot").src = URL.createObjectURL(blob);
  $("shot").hidden = false;
}

$("photo").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  showImage(file);
  try { await predict(file); say("", false, e.target); } catch (err) { say(err.message, true, e.target); }
  e.target.value = "";
});

$("camera-start").addEventListener("click", async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    $("camera").srcObject = stream;
    $("camera").hidden = false;
    $("shot").hidden = true;
    $("station-camera-state").hidden = true;
    source = "browser";
    $("live").disabled = false;
    $("live").checked = true;
    startLive();
  } catch (err) {
    say("no camera: " + err.message + " (uploads still work)", true, $("camera-start"));
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
    if (!$("live").checked || busy || pending) return;
    if (source === "browser" && !$("camera").videoWidth) return;
    busy = true;
    const near = source === "station" ? $("station-camera") : $("camera-start");
    try {
      if (source === "browser") await predict(await grab());
      else await showStationFrame();
    } catch (err) { say(err.message, true, near); } finally { busy = false; }
  }, 500);
}

// The station's own camera (serve --camera): its decisions go to the line; here each new frame is shown and
// predicted like a photo (not queued again: the station queued it), so Right, Correct it and teach work on it.
$("station-camera").addEventListener("click", () => {
  const stream = $("camera").srcObject;
  stream?.getTracks().forEach((track) => track.stop());
  $("camera").srcObject = null;
  $("camera").hidden = true;
  source = "station";
  stationFrameId = null;
  $("station-camera-state").hidden = false;
  $("live").disabled = false;
  $("live").checked = true;
  startLive();
});

async function showStationFrame() {
  const state = await api("/api/camera");
  const d = state.decision;
  const line = d ? `frame ${d.frame_id}: ${d.label ?? "unknown"} ${pct(d.confidence)}` : "no decision yet";
  const s = state.stats;
  $("station-camera-state").textContent = `${state.source} · sent to the line: ${line} · frames read ${s.read}, ` +
    `decided ${s.decided}, dropped ${s.dropped}`;
  if (state.frame_id === null || state.frame_id === stationFrameId) return;
  const response = await fetch("/api/camera/frame", { headers: authorised() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new ApiError(plainWords(body.detail || response.statusText, response.status), response.status, body);
  }
  const blob = await response.blob();
  stationFrameId = Number(response.headers.get("X-Frame-Id"));
  showImage(blob);
  await predict(blob, { enqueue: false });
}

async function offerStationCamera() {  // a station started with --camera: offer it as a source
  try { await api("/api/camera"); $("station-camera").hidden = false; } catch { $("station-camera").hidden = true; }
}
$("live").addEventListener("change", () => { if ($("live").checked) startLive(); });

// -- learning, with "did you mean ...?" for near-duplicate class names ---------------------------------
async function learn(files, label, extra = {}) {
  const form = formOf({ label, ...extra });
  for (const [name, file] of files) form.append("files", file, name);
  const result = await api("/api/learn", { method: "POST", form });
  await refresh();
  return result;
}

// `send(label, newClass)` once; on a near-duplicate (409 with a suggestion) ask, then send the chosen
// name. Resolves {label, result}, or null when the worker cancels.
async function withSuggestion(near, label, send) {
  try { return { label, result: await send(label, false) }; } catch (err) {
    const suggestion = err.body?.suggestion;
    if (err.status !== 409 || !suggestion) throw err;
    const choice = await ask(near, err.message, [`Use '${suggestion}'`, `Create '${label}' as a new class`]);
    if (choice === null) return null;
    const chosen = choice === 0 ? suggestion : label;
    return { label: chosen, result: await send(chosen, choice === 1) };
  }
}
const newClass = (yes) => (yes ? "true" : null);

// -- feedback: Right, Correct it, or one click on a next-best class ----------------------------------
async function feedback(near, work) {
  const image = lastImage;
  pending = true;
  updateFeedback();
  try { if (await work(image)) usedFor = image; } catch (err) { say(err.message, true, near); }
  finally { pending = false; updateFeedback(); }
}

$("confirm").addEventListener("click", () => feedback($("confirm"), async (image) => {
  const p = lastPrediction;
  if (!p?.label) return false;
  await learn([["confirmed.jpg", image]], p.label, { kind: "confirm", predicted: p.label, confidence: p.confidence });
  say(`learned: confirmed ${p.label}`, false, $("confirm"));
  return true;
}));

function correctTo(label, near) {
  if (!lastImage || !label) { say("type the right class first", true, near); return; }
  const p = lastPrediction;
  const predicted = p?.label ?? null;
  return feedback(near, async (image) => {
    const extra = { kind: predicted ? "correct" : "teach", predicted, confidence: p?.confidence };
    const r = await withSuggestion(near, label, (l, isNew) => learn([["corrected.jpg", image]], l,
                                                                     { ...extra, new_class: newClass(isNew) }));
    if (!r) return false;
    $("correct-label").value = "";
    say(`learned: this is ${r.label}`, false, near);
    usedFor = image;
    if (!$("live").checked) await predict(image, { enqueue: false });
    return true;
  });
}

$("result-bar").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!$("correct").disabled) correctTo($("correct-label").value.trim(), $("correct"));
});

// -- teaching -----------------------------------------------------------------------------------------
function showPicked() {
  const files = [...$("teach-files").files];
  const names = files.slice(0, 5).map((f) => f.name).join(", ") + (files.length > 5 ? ", …" : "");
  const thumbs = files.filter((f) => f.type.startsWith("image/")).slice(0, 8).map((f) => {
    const url = URL.createObjectURL(f);
    const img = element("img", { src: url, alt: f.name });
    img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
    return img;
  });
  const summary = files.length ? `${plural(files.length, "file")} chosen: ${names}` : "nothing chosen yet";
  const strip = thumbs.length ? [element("div", { className: "thumbs" }, ...thumbs)] : [];
  $("teach-picked").replaceChildren(summary, ...strip);
}
$("teach-files").addEventListener("change", showPicked);

$("teach-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const near = $("teach"), files = [...$("teach-files").files], label = $("teach-label").value.trim();
  if (!files.length) { say("choose images, a zip or a video first", true, near); return; }
  near.disabled = true;
  try {
    say(`teaching ${plural(files.length, "file")}…`, false, near);
    const pairs = files.map((f) => [f.name, f]);
    const r = await withSuggestion(near, label, (l, isNew) => learn(pairs, l, { new_class: newClass(isNew) }));
    if (!r) { say("nothing taught", false, near); return; }
    say(`learned ${plural(r.result.learned, "image")}${r.label ? " of " + r.label : ""}`, false, near);
    $("teach-files").value = "";
    showPicked();
    await refreshDecision();
  } catch (err) { say(err.message, true, near); } finally { near.disabled = false; }
});

const DONE = { teach: "taught", confirm: "confirmed", correct: "corrected", label: "labelled from the queue" };

$("undo").addEventListener("click", async () => {
  const near = $("undo");
  try {
    const { undone: u } = await api("/api/undo", { method: "POST" });
    const who = u.user ? ` by ${u.user}` : "";
    say(`undone: ${plural(u.examples, "example")} of ${u.label} (${DONE[u.kind] ?? u.kind}${who})`, false, near);
    usedFor = null;  // that frame's feedback may be given again
    await refresh();
    await refreshDecision();
  } catch (err) { say(err.message, true, near); }
});

// -- classes ------------------------------------------------------------------------------------------
async function classList(status) {
  try { return (await api("/api/classes")).classes; } catch (err) {
    if (err.status !== 404) throw err;  // a station without the endpoint: names only
    return status.classes.map((name) => ({ name, examples: null, thumbnails: [], few: false }));
  }
}

function classCard(c) {
  const card = element("li", { className: "card" }, element("h3", { textContent: c.name }));
  card.dataset.name = c.name;
  if (c.examples !== null) card.append(element("p", { textContent: plural(c.examples, "example") }));
  if (c.thumbnails.length) {
    card.append(element("div", { className: "thumbs" }, ...c.thumbnails.map((id) => {
      const img = element("img", { alt: c.name });
      loadImage(img, `/api/thumbnails/${id}`);
      return img;
    })));
  }
  const hint = "few examples: teach at least 5 to recognise it well";
  if (c.few) card.append(element("p", { className: "hint", textContent: hint }));
  const actions = [["Rename", renameClass], ["Merge into…", mergeClass], ["Delete", deleteClass]];
  const buttons = actions.map(([text, action]) => {
    const b = element("button", { type: "button", textContent: text });
    b.addEventListener("click", () => action(b, c));
    return b;
  });
  card.append(element("div", { className: "row" }, ...buttons), element("p", { className: "message", role: "status" }));
  return card;
}

function labelled(text, field) {
  field.id = `field-${Math.random().toString(36).slice(2)}`;
  const label = element("label", { textContent: text, htmlFor: field.id, className: "inline" });
  return Object.assign(element("span", {}, label, field), { field });
}

async function classOperation(near, path, fields, done) {
  try {
    const r = await api(`/api/classes/${path}`, { method: "POST", form: formOf(fields) });
    await refresh();
    sayAfterRebuild(`${done} (version ${r.version})`, $("class-cards"));
    await refreshDecision();
  } catch (err) { say(err.message, true, near); }
}

async function renameClass(near, c) {
  const input = labelled("new name", element("input", { value: c.name, autocomplete: "off" }));
  if (await ask(near, `Rename ${c.name}?`, ["Rename"], input) !== 0) return;
  const to = input.field.value.trim();
  if (!to) { say("type the new name", true, near); return; }
  await classOperation(near, "rename", { name: c.name, to }, `renamed ${c.name} to ${to}`);
}

async function mergeClass(near, c) {
  const others = classInfo.filter((o) => o.name !== c.name);
  if (!others.length) { say("there is no other class to merge into", true, near); return; }
  const options = others.map((o) => element("option", { value: o.name, textContent: o.name }));
  const select = labelled("into", element("select", {}, ...options));
  const examples = c.examples === null ? "the examples" : `all ${plural(c.examples, "example")}`;
  if (await ask(near, `Merge ${examples} of ${c.name}`, ["Merge"], select) !== 0) return;
  const into = select.field.value;
  await classOperation(near, "merge", { name: c.name, into }, `merged ${c.name} into ${into}`);
}

async function deleteClass(near, c) {
  const examples = c.examples === null ? "its examples" : plural(c.examples, "example");
  if (await ask(near, `Delete ${c.name} and ${examples}?`, [`Delete ${c.name}`]) !== 0) return;
  await classOperation(near, "delete", { name: c.name }, `deleted ${c.name}`);
}

function showClasses(classes) {
  classInfo = [...classes].sort((a, b) => (b.examples ?? 0) - (a.examples ?? 0));
  $("class-cards").replaceChildren(...classes.map(classCard));
  if (!classes.length) $("class-cards").append(element("li", { textContent: "nothing learned yet: teach a class" }));
}

// -- knowledge ----------------------------------------------------------------------------------------
$("consolidate").addEventListener("click", async () => {
  const near = $("consolidate");
  try {
    const r = await api("/api/consolidate", { method: "POST" });
    say(`consolidated: version ${r.version}`, false, near);
  } catch (err) { say(err.message, true, near); }
  await refresh();
});

$("import-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("package", file, file.name);
  try {
    const r = await api("/api/knowledge", { method: "POST", form });
    say(`merged knowledge from ${r.site}`, false, e.target);
  } catch (err) { say(err.message, true, e.target); }
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
  } catch (err) { say("export: " + err.message, true, $("export")); }
});

async function rollback(near, version) {
  const question = `Go back to version ${version}? The station forgets what it learned after that version.`;
  if (await ask(near, question, [`Roll back to ${version}`]) !== 0) return;
  try {
    const r = await api(`/api/versions/${version}/rollback`, { method: "POST" });
    await refresh();  // first: the rows are rebuilt, the message then takes the focus from the gone button
    sayAfterRebuild(`rolled back to version ${version} (now ${r.version})`, $("versions"));
    await refreshDecision();
  } catch (err) { say(err.message, true, $("versions")); }
}

const localTime = (iso) => new Date(/Z|[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z").toLocaleString();

function changesText(c) {
  if (!c) return "";
  const parts = [];
  if (c.added?.length) parts.push("added " + c.added.join(", "));
  if (c.removed?.length) parts.push("removed " + c.removed.join(", "));
  for (const [old, name] of Object.entries(c.renamed ?? {})) parts.push(`renamed ${old} → ${name}`);
  if (c.examples) parts.push(`${c.examples > 0 ? "+" : ""}${plural(c.examples, "example")}`);
  return parts.join("; ");
}

function versionRow(v, active) {
  const what = v.reason + (v.user ? ` by ${v.user}` : "") + (v.site ? ` from ${v.site}` : "");
  const tr = element("tr", { className: v.id === active ? "active" : "" });
  const id = v.id === active ? `${v.id} (now)` : v.id;
  const cells = [id, localTime(v.created_at), what, changesText(v.changes), v.classes];
  tr.append(...cells.map((text) => element("td", { textContent: text })));
  const b = element("button", { type: "button", textContent: "roll back", className: "rollback" });
  b.dataset.version = v.id;
  b.addEventListener("click", () => rollback(b, v.id));
  tr.append(element("td", {}, v.pruned_at ? "" : b));
  return tr;
}

// -- the labelling queue ------------------------------------------------------------------------------
let queueShown = null;  // the ids and classes on screen: an unchanged queue keeps what the worker is typing

async function refreshQueue() {
  const { items } = await api("/api/queue?limit=20");
  const shown = JSON.stringify([items.map((i) => i.id), classInfo.map((c) => c.name)]);  // keys name classes
  if (shown === queueShown) return;
  queueShown = shown;
  $("queue").replaceChildren(...items.map(queueItem));
  if (!items.length) $("queue").append(element("li", { textContent: "nothing to label" }));
}
setInterval(() => { if (!document.hidden) refreshQueue().catch(() => {}); }, 5000);

function topClasses(item) {
  const names = classInfo.map((c) => c.name).filter((n) => n !== item.predicted);
  return (item.predicted ? [item.predicted, ...names] : names).slice(0, 9);
}

function queueItem(item) {
  const li = element("li", { className: "queue-item", tabIndex: 0 });
  li.dataset.id = item.id;
  if (item.has_image) {
    const img = element("img", { alt: `queued image ${item.id}` });
    loadImage(img, `/api/queue/${item.id}/image`);
    li.append(img);
  }
  li.append(element("p", { textContent: `the station said ${item.predicted ?? "?"} ${pct(item.confidence)}` }));
  const input = labelled("class", element("input", { value: item.predicted ?? "", autocomplete: "off" }));
  input.field.setAttribute("list", "classes");
  const learnButton = element("button", { textContent: "Learn" });
  const dismiss = element("button", { type: "button", textContent: "Dismiss", className: "secondary" });
  const form = element("form", { className: "row" }, input, learnButton, dismiss);
  const top = topClasses(item);
  const keys = element("p", { className: "keys", textContent: top.map((name, i) => `${i + 1} ${name}`).join(" · ") });
  li.append(form, keys, element("p", { className: "message", role: "status" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    labelQueued(item, input.field.value.trim(), learnButton);
  });
  dismiss.addEventListener("click", () => dismissQueued(item, dismiss));
  li.addEventListener("keydown", (e) => {  // number keys pick a top class (not while typing a name)
    const n = Number(e.key);
    if (e.target === input.field || !Number.isInteger(n) || n < 1 || n > top.length) return;
    e.preventDefault();
    input.field.value = top[n - 1];
    input.field.focus();
  });
  return li;
}

async function labelQueued(item, label, near) {
  if (!label) { say("type the class first (or press Dismiss)", true, near); return; }
  try {
    const send = (l, isNew) => api(`/api/queue/${item.id}`,
                                   { method: "POST", form: formOf({ label: l, new_class: newClass(isNew) }) });
    const r = await withSuggestion(near, label, send);
    if (!r) return;
    say(`learned ${r.label}`, false, $("queue"));
    await refresh();
    await refreshDecision();  // the station knows more now: what it says about the image on screen
  } catch (err) { say(err.message, true, near); }
}

async function dismissQueued(item, near) {
  try {
    await api(`/api/queue/${item.id}`, { method: "POST", form: new FormData() });
    say("dismissed", false, $("queue"));
    await refreshQueue();
  } catch (err) { say(err.message, true, near); }
}

// -- state --------------------------------------------------------------------------------------------
async function refresh() {
  const [status, versions] = await Promise.all([api("/api/status"), api("/api/versions")]);
  $("status").textContent = `${status.classes.length} classes · ${status.examples} examples · version ${status.active_version} · ${status.learner}`;
  calibration = status.calibration ?? null;
  showCalibration();
  $("classes").replaceChildren(...status.classes.map((c) => element("option", { value: c })));
  $("versions").tBodies[0].replaceChildren(...versions.versions.map((v) => versionRow(v, versions.active)));
  showClasses(await classList(status));
  await refreshQueue();
  await offerStationCamera();
}

if ($("token").value) checkToken(); else refresh().catch((err) => say(err.message, true));
