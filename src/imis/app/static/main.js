// The page: open, view, prompt, objects, export; state restored from the server after a reload.
import { download, getBinary, getJSON, postFile, postJSON, unpackU16 } from "./api.js";
import { Viewer } from "./viewer.js";
import { renderObjects } from "./objects.js";

const $ = (id) => document.getElementById(id);
const S = { info: null, sid: null, doc: null, axis: "z", index: { z: 0, y: 0, x: 0 }, objects: [], active: 1, draft: null };
let busy = 0;
let queue = Promise.resolve();
let sliceGen = 0;

const viewer = new Viewer($("canvas"), {
  click: (x, y, positive) => promptAt("click", [x, y, positive]),
  box: (x0, y0, x1, y1) => promptAt("box", [x0, y0, x1, y1]),
  stroke: (kind, points, positive) => promptAt(kind, { points, positive }),
  scroll: (d) => setSlice(S.index[S.axis] + d),
  window: (w, l) => setWindow(w, l, true),
});
window.imis = { S, viewer, idle: () => busy === 0 };

// ---- messages and busy state ---------------------------------------------------------------------
function message(text, info = false) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
  m.className = info ? "info" : "";
}

function setBusy(delta, label) {
  busy += delta;
  document.body.dataset.busy = String(busy);
  $("status").textContent = busy ? label || "working…" : "";
}

// Requests of this page run one after the other, in the order the user made them.
function enqueue(label, fn) {
  setBusy(1, label);
  const run = queue.then(fn).catch((err) => message(err.message || String(err)));
  queue = run.finally(() => setBusy(-1));
  return queue;
}

// ---- opening -------------------------------------------------------------------------------------
async function init() {
  try {
    S.info = await getJSON("/api/info");
  } catch (err) {
    message(err.message);
    return;
  }
  $("model").textContent = `${S.info.model} · ${S.info.license} · ${S.info.runtime}`;
  $("browser").hidden = !S.info.data_dir;
  if (S.info.data_dir) browse("");
  const sid = localStorage.getItem("imis.sid");
  if (sid) enqueue("restoring…", () => restore(sid));
  setTool("point");
  setPolarity(true);
}

async function restore(sid) {
  try {
    const state = await getJSON(`/api/s/${sid}`);
    const saved = JSON.parse(localStorage.getItem("imis.view") || "{}");
    await openState(state, saved);
    message("Session restored from the server.", true);
  } catch (err) {
    localStorage.removeItem("imis.sid");
    if (err.status !== 404) throw err;
  }
}

async function browse(path) {
  try {
    const listing = await getJSON(`/api/files?path=${encodeURIComponent(path)}`);
    $("cwd").textContent = "/" + listing.path;
    $("up-dir").onclick = () => browse(listing.path.split("/").slice(0, -1).join("/"));
    const ul = $("files");
    ul.replaceChildren();
    for (const e of listing.entries) {
      const li = document.createElement("li");
      li.textContent = e.name;
      li.title = e.path;
      li.className = e.dir ? "dir" : "file";
      li.onclick = () => (e.dir && !/dicom|dcm/i.test(e.name) ? browse(e.path) : openPath(e.path));
      li.ondblclick = () => openPath(e.path);
      ul.appendChild(li);
    }
  } catch (err) {
    message(err.message);
  }
}

function openPath(path) {
  message("");
  enqueue("opening…", async () => openState(await postJSON("/api/open", { path }), {}));
}

function upload(file) {
  message("");
  const url = `/api/upload?name=${encodeURIComponent(file.name)}`;
  enqueue(`uploading ${file.name}…`, async () => openState(await postFile(url, file), {}));
}

async function openState(state, saved) {
  S.sid = state.doc.id;
  S.doc = state.doc;
  localStorage.setItem("imis.sid", S.sid);
  const [nz, ny, nx] = state.doc.shape;
  S.index = saved.index || { z: Math.floor(nz / 2), y: Math.floor(ny / 2), x: Math.floor(nx / 2) };
  S.axis = saved.axis || "z";
  $("doc-name").textContent = `${state.doc.name} · ${state.doc.is_2d ? "2D" : nx + "×" + ny + "×" + nz}`;
  $("empty").hidden = true;
  for (const b of $("views").children) b.disabled = state.doc.is_2d && b.dataset.axis !== "z";
  $("propagate").disabled = state.doc.is_2d;
  $("show3d").disabled = state.doc.is_2d;
  // the formats this input can be exported to: PNG for 2D images, DICOM SEG for DICOM series
  $("fmt").querySelector('[value="png"]').disabled = !state.doc.is_2d;
  $("fmt").querySelector('[value="dcm"]').disabled = !state.doc.dicom_series;
  if ($("fmt").selectedOptions[0].disabled) $("fmt").value = "nii.gz";
  if (state.doc.is_2d) toggle3d(false);
  const modality = state.doc.modality;
  $("preset").value = saved.preset || (modality === "CT" ? "400,40" : "auto");
  applyPreset(false);
  applyState(state);
  await loadSlice(false);
}

// ---- view ----------------------------------------------------------------------------------------
function aspectOf(axis) {
  const [sx, sy, sz] = S.doc.spacing_xyz;
  return axis === "z" ? sy / sx : axis === "y" ? sz / sx : sz / sy;
}

function axisLength(axis) {
  return S.doc.shape["zyx".indexOf(axis)];
}

async function loadSlice(keepView = true) {
  if (!S.sid) return;
  const gen = ++sliceGen;
  const axis = S.axis,
    index = S.index[axis];
  $("slice").max = axisLength(axis) - 1;
  $("slice").value = index;
  $("slice-label").textContent = `${index + 1} / ${axisLength(axis)}`;
  for (const b of $("views").children) b.classList.toggle("on", b.dataset.axis === axis);
  localStorage.setItem("imis.view", JSON.stringify({ axis, index: S.index, preset: $("preset").value }));
  const { buffer, headers } = await getBinary(`/api/s/${S.sid}/slice?axis=${axis}&index=${index}`);
  if (gen !== sliceGen) return; // the user has scrolled on
  const [h, w] = headers.get("X-Shape").split(",").map(Number);
  const img = new Float32Array(buffer, 0, h * w);
  const labels = new Uint16Array(buffer.slice(4 * h * w));
  const flip = (S.doc.flips[axis] || [false, false]).slice();
  viewer.setPlane(img, labels, w, h, flip, aspectOf(axis), keepView);
  updateMarks();
  if (headers.get("X-Encoded") !== "true") watchEncoding(gen, axis, index);
}

// "encoding slice…" while the background encoder works on the slice shown (a click then waits for it)
async function watchEncoding(gen, axis, index) {
  const note = "encoding slice…";
  if (!busy) $("status").textContent = note;
  while (gen === sliceGen) {
    await new Promise((r) => setTimeout(r, 500));
    let done = false;
    try {
      done = (await getJSON(`/api/s/${S.sid}/encoded?axis=${axis}&index=${index}`)).encoded;
    } catch (_) {
      return;
    }
    if (done) break;
  }
  if ($("status").textContent === note) $("status").textContent = "";
}

function setSlice(i) {
  if (!S.doc) return;
  S.index[S.axis] = Math.max(0, Math.min(axisLength(S.axis) - 1, i));
  loadSlice(true).catch((err) => message(err.message));
}

function setAxis(axis) {
  if (!S.doc || (S.doc.is_2d && axis !== "z")) return;
  S.axis = axis;
  loadSlice(false).catch((err) => message(err.message));
}

function setWindow(w, l, custom) {
  viewer.window = [w, l];
  $("wl").textContent = `W ${Math.round(w)} L ${Math.round(l)}`;
  if (custom) $("preset").value = "custom";
  viewer.renderBase();
  viewer.draw();
}

function applyPreset(redraw = true) {
  const v = $("preset").value;
  if (v === "custom") return;
  const [w, l] = v === "auto" ? S.doc.auto_window : v.split(",").map(Number);
  viewer.window = [w, l];
  $("wl").textContent = `W ${Math.round(w)} L ${Math.round(l)}`;
  if (redraw) setWindow(w, l, false);
}

// ---- state from the server -----------------------------------------------------------------------
async function applyState(state) {
  S.objects = state.objects;
  S.active = state.active;
  S.draft = state.draft;
  viewer.objects = new Map(state.objects.map((o) => [o.label, o]));
  viewer.active = state.active;
  renderObjects($("objects"), state.objects, state.active, objectActions);
  const d = state.draft;
  $("undo").disabled = !(d && d.can_undo);
  $("redo").disabled = !(d && d.can_redo);
  if (state.plane && state.plane.axis === S.axis && state.plane.index === S.index[S.axis]) {
    viewer.setLabels(await unpackU16(state.plane.labels));
  } else if (state.plane) {
    await loadSlice(true);
  }
  updateMarks();
  if (state.job) showJob(state.job);
  refresh3d();
}

function updateMarks() {
  const d = S.draft;
  const here = d && d.axis === S.axis && d.index === S.index[S.axis] && d.label === S.active;
  viewer.marks = here ? { clicks: d.clicks, box: d.box } : { clicks: [], box: null };
  viewer.draw();
}

function here() {
  return { axis: S.axis, index: S.index[S.axis] };
}

// ---- prompting -----------------------------------------------------------------------------------
function promptAt(kind, value) {
  if (!S.sid) return;
  message("");
  const t0 = performance.now();
  const body = { ...here(), kind, value };
  enqueue("segmenting…", async () => {
    const state = await postJSON(`/api/s/${S.sid}/prompt`, body);
    await applyState(state);
    const ms = performance.now() - t0;
    const el = $("latency");
    el.textContent = `${Math.round(ms)} ms (server ${Math.round(state.server_ms)}) · IoU≈${state.quality.toFixed(2)}`;
    el.dataset.ms = String(Math.round(ms));
  });
}

function historyOp(op) {
  if (!S.sid) return;
  enqueue(op + "…", async () => applyState(await postJSON(`/api/s/${S.sid}/history`, { ...here(), op })));
}

function objectOp(op, extra = {}) {
  if (!S.sid) return;
  enqueue("", async () => applyState(await postJSON(`/api/s/${S.sid}/objects`, { ...here(), op, ...extra })));
}

const objectActions = {
  select: (label) => objectOp("select", { label }),
  update: (label, fields) => objectOp("update", { label, ...fields }),
  remove: (label) => objectOp("delete", { label }),
};

function exportLabels() {
  if (!S.sid) return;
  const fmt = $("fmt").value;
  enqueue("exporting…", async () => {
    const name = await download(`/api/s/${S.sid}/export?fmt=${encodeURIComponent(fmt)}`);
    message(`Exported ${name}.`, true);
  });
}

function importLabels(file) {
  if (!S.sid) return;
  enqueue("importing…", async () => {
    await applyState(await postFile(`/api/s/${S.sid}/import?name=${encodeURIComponent(file.name)}`, file));
    await loadSlice(true);
  });
}

function propagate() {
  if (!S.sid || S.doc.is_2d) return;
  enqueue("propagating…", async () => {
    const max = parseInt($("max-slices").value, 10);
    const body = { ...here(), max_slices: Number.isFinite(max) && max > 0 ? max : null };
    const { job } = await postJSON(`/api/s/${S.sid}/propagate`, body);
    showJob(job);
    let j = job;
    while (j.running) {
      await new Promise((r) => setTimeout(r, 300));
      j = (await getJSON(`/api/s/${S.sid}/progress`)).job;
      showJob(j);
    }
    if (j.error) throw new Error(j.error);
    message(`Propagated to ${j.filled} slices.`, true);
    applyState(await getJSON(`/api/s/${S.sid}`));
    await loadSlice(true);
  });
}

function showJob(job) {
  const p = $("progress");
  p.hidden = !job.running;
  p.max = Math.max(1, job.total);
  p.value = job.done;
  if (job.running) $("status").textContent = `propagating ${job.done}/${job.total || "?"}`;
}

// ---- 3D view: rendered by the server (GET render3d), re-requested as the angles or the labels change --
const V3 = { open: false, busy: false, again: false, url: null, count: 0 };

function toggle3d(open = !V3.open) {
  V3.open = open && !!S.doc && !S.doc.is_2d;
  $("view3d").hidden = !V3.open;
  $("show3d").textContent = V3.open ? "Hide 3D view" : "Show 3D view";
  refresh3d();
}

// One render at a time; changes while one is on the way are folded into a single next one.
async function refresh3d() {
  if (!V3.open || !S.sid) return;
  if (V3.busy) {
    V3.again = true;
    return;
  }
  V3.busy = true;
  const az = $("az3d").value,
    el = $("el3d").value;
  try {
    const { buffer } = await getBinary(`/api/s/${S.sid}/render3d?azimuth=${az}&elevation=${el}&size=384`);
    if (V3.url) URL.revokeObjectURL(V3.url);
    V3.url = URL.createObjectURL(new Blob([buffer], { type: "image/png" }));
    const img = $("img3d");
    img.src = V3.url;
    img.dataset.angles = `${az},${el}`;
    img.dataset.count = String(++V3.count);
  } catch (err) {
    message(err.message);
  } finally {
    V3.busy = false;
    if (V3.again) {
      V3.again = false;
      refresh3d();
    }
  }
}

function wire3d() {
  $("show3d").onclick = () => toggle3d();
  $("az3d").oninput = refresh3d;
  $("el3d").oninput = refresh3d;
  const img = $("img3d");
  let drag = null;
  img.onpointerdown = (e) => {
    img.setPointerCapture(e.pointerId);
    drag = { x: e.clientX, y: e.clientY, az: Number($("az3d").value), el: Number($("el3d").value) };
  };
  img.onpointermove = (e) => {
    if (!drag) return;
    let az = drag.az - (e.clientX - drag.x) * 0.8;
    az = ((((az + 180) % 360) + 360) % 360) - 180;
    $("az3d").value = String(Math.round(az));
    $("el3d").value = String(Math.max(-85, Math.min(85, Math.round(drag.el + (e.clientY - drag.y) * 0.8))));
    refresh3d();
  };
  img.onpointerup = () => (drag = null);
}

// ---- controls ------------------------------------------------------------------------------------
function setTool(tool) {
  viewer.tool = tool;
  for (const b of $("tools").children) b.classList.toggle("on", b.dataset.tool === tool);
}

function setPolarity(pos) {
  viewer.positive = pos;
  for (const b of $("polarity").children) b.classList.toggle("on", (b.dataset.pos === "1") === pos);
}

function wire() {
  $("upload").onchange = (e) => e.target.files[0] && upload(e.target.files[0]);
  $("import").onchange = (e) => e.target.files[0] && importLabels(e.target.files[0]);
  for (const b of $("views").children) b.onclick = () => setAxis(b.dataset.axis);
  for (const b of $("tools").children) b.onclick = () => setTool(b.dataset.tool);
  for (const b of $("polarity").children) b.onclick = () => setPolarity(b.dataset.pos === "1");
  $("slice").oninput = (e) => setSlice(Number(e.target.value));
  $("preset").onchange = () => applyPreset(true);
  $("opacity").oninput = (e) => {
    viewer.opacity = Number(e.target.value);
    viewer.renderOverlay();
    viewer.draw();
  };
  $("outline").onchange = (e) => {
    viewer.outline = e.target.checked;
    viewer.renderOverlay();
    viewer.draw();
  };
  $("fit").onclick = () => viewer.fit();
  $("zoom-in").onclick = () => viewer.zoomAt(1.25, viewer.canvas.width / 2, viewer.canvas.height / 2);
  $("zoom-out").onclick = () => viewer.zoomAt(0.8, viewer.canvas.width / 2, viewer.canvas.height / 2);
  $("text-form").onsubmit = (e) => {
    e.preventDefault();
    const t = $("text").value.trim();
    if (t) promptAt("text", t);
  };
  $("undo").onclick = () => historyOp("undo");
  $("redo").onclick = () => historyOp("redo");
  $("reset").onclick = () => historyOp("reset");
  $("next").onclick = () => objectOp("next");
  $("export").onclick = exportLabels;
  $("propagate").onclick = propagate;
  wire3d();
  document.addEventListener("keydown", onKey);
}

function onKey(e) {
  if (e.target.matches("input[type=text], input:not([type]), select")) return;
  const k = e.key.toLowerCase();
  const ctrl = e.ctrlKey || e.metaKey;
  const act = {
    z: () => (ctrl ? historyOp(e.shiftKey ? "redo" : "undo") : null),
    y: () => (ctrl ? historyOp("redo") : null),
    p: () => setTool("point"),
    b: () => setTool("box"),
    s: () => setTool("scribble"),
    l: () => setTool("lasso"),
    t: () => setPolarity(!viewer.positive),
    r: () => historyOp("reset"),
    m: () => objectOp("next"),
    o: () => $("outline").click(),
    h: () => objectActions.update(S.active, { visible: !viewer.objects.get(S.active)?.visible }),
    f: () => viewer.fit(),
    e: exportLabels,
    v: () => toggle3d(),
    1: () => setAxis("z"),
    2: () => setAxis("y"),
    3: () => setAxis("x"),
    arrowup: () => setSlice(S.index[S.axis] + 1),
    arrowdown: () => setSlice(S.index[S.axis] - 1),
    pageup: () => setSlice(S.index[S.axis] + 10),
    pagedown: () => setSlice(S.index[S.axis] - 10),
    "+": () => $("zoom-in").click(),
    "=": () => $("zoom-in").click(),
    "-": () => $("zoom-out").click(),
  }[k];
  if (!act || (ctrl && !["z", "y"].includes(k))) return;
  if (act() !== null) e.preventDefault();
}

wire();
init();
