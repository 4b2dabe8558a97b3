// The slice viewer: one canvas, window/level, zoom/pan, radiological flips, label overlay, prompt marks.
// Image coordinates: (u, v) in [0, w) x [0, h) of the plane as the server sends it (column, row).

export class Viewer {
  constructor(canvas, handlers) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    // {click(x, y, positive), box(x0, y0, x1, y1), stroke(kind, points, positive), scroll(delta), window(w, l)}
    this.h = handlers;
    this.img = null;
    this.labels = null;
    this.w = 0;
    this.hgt = 0;
    this.window = [400, 40];
    this.flip = [false, false];
    this.aspect = 1; // row spacing / column spacing
    this.scale = 1;
    this.offset = [0, 0];
    this.opacity = 0.45;
    this.outline = true;
    this.objects = new Map(); // label -> {color, visible}
    this.active = 1;
    this.tool = "point"; // point, box, scribble or lasso
    this.positive = true;
    this.marks = { clicks: [], box: null };
    this.drag = null;
    this.base = document.createElement("canvas");
    this.overlay = document.createElement("canvas");
    this._bind();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  setPlane(img, labels, w, h, flip, aspect, keepView) {
    const sameSize = w === this.w && h === this.hgt && aspect === this.aspect;
    this.img = img;
    this.labels = labels;
    this.w = w;
    this.hgt = h;
    this.flip = flip;
    this.aspect = aspect;
    this.base.width = this.overlay.width = w;
    this.base.height = this.overlay.height = h;
    this.renderBase();
    this.renderOverlay();
    if (!(keepView && sameSize)) this.fit();
    else this.draw();
  }

  setLabels(labels) {
    this.labels = labels;
    this.renderOverlay();
    this.draw();
  }

  resize() {
    const r = this.canvas.parentElement.getBoundingClientRect();
    this.canvas.width = Math.max(50, Math.floor(r.width));
    this.canvas.height = Math.max(50, Math.floor(r.height));
    if (this.img) this.fit();
  }

  fit() {
    if (!this.w) return;
    const cw = this.canvas.width,
      ch = this.canvas.height;
    this.scale = Math.min(cw / this.w, ch / (this.hgt * this.aspect)) * 0.96;
    this.offset = [(cw - this.w * this.scale) / 2, (ch - this.hgt * this.aspect * this.scale) / 2];
    this.draw();
  }

  zoomAt(factor, sx, sy) {
    const s = Math.min(40, Math.max(0.1, this.scale * factor));
    const f = s / this.scale;
    this.offset = [sx - (sx - this.offset[0]) * f, sy - (sy - this.offset[1]) * f];
    this.scale = s;
    this.draw();
  }

  // ---- coordinates --------------------------------------------------------------------------------
  toImage(sx, sy) {
    let u = (sx - this.offset[0]) / this.scale;
    let v = (sy - this.offset[1]) / (this.scale * this.aspect);
    if (this.flip[0]) u = this.w - u;
    if (this.flip[1]) v = this.hgt - v;
    return [u, v];
  }

  toScreen(u, v) {
    if (this.flip[0]) u = this.w - u;
    if (this.flip[1]) v = this.hgt - v;
    return [this.offset[0] + u * this.scale, this.offset[1] + v * this.scale * this.aspect];
  }

  // pixel-centre coordinates the Session takes (x = column, y = row), clamped into the image
  pixel(u, v) {
    const cl = (a, n) => Math.min(n - 1, Math.max(0, a));
    return [cl(u - 0.5, this.w), cl(v - 0.5, this.hgt)];
  }

  inside(u, v) {
    return u >= 0 && v >= 0 && u < this.w && v < this.hgt;
  }

  // ---- rendering ----------------------------------------------------------------------------------
  renderBase() {
    if (!this.img) return;
    const [ww, wl] = this.window;
    const lo = wl - ww / 2,
      k = 255 / Math.max(1e-6, ww);
    const data = new ImageData(this.w, this.hgt);
    const px = data.data,
      img = this.img;
    for (let i = 0; i < img.length; i++) {
      const g = (img[i] - lo) * k;
      const c = g < 0 ? 0 : g > 255 ? 255 : g;
      px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = c;
      px[4 * i + 3] = 255;
    }
    this.base.getContext("2d").putImageData(data, 0, 0);
  }

  renderOverlay() {
    if (!this.labels) return;
    const w = this.w,
      h = this.hgt,
      lab = this.labels;
    const data = new ImageData(w, h);
    const px = data.data;
    const fill = Math.round(this.opacity * 255);
    for (let i = 0; i < lab.length; i++) {
      const l = lab[i];
      if (!l) continue;
      const o = this.objects.get(l);
      if (o && !o.visible) continue;
      const c = o ? o.color : [255, 255, 0];
      const x = i % w;
      const edge =
        (x > 0 && lab[i - 1] !== l) ||
        (x < w - 1 && lab[i + 1] !== l) ||
        (i >= w && lab[i - w] !== l) ||
        (i < lab.length - w && lab[i + w] !== l);
      px[4 * i] = c[0];
      px[4 * i + 1] = c[1];
      px[4 * i + 2] = c[2];
      px[4 * i + 3] = edge && (this.outline || l === this.active) ? 255 : fill;
    }
    this.overlay.getContext("2d").putImageData(data, 0, 0);
  }

  draw() {
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.img) return;
    const sx = this.scale * (this.flip[0] ? -1 : 1);
    const sy = this.scale * this.aspect * (this.flip[1] ? -1 : 1);
    const tx = this.offset[0] + (this.flip[0] ? this.w * this.scale : 0);
    const ty = this.offset[1] + (this.flip[1] ? this.hgt * this.scale * this.aspect : 0);
    ctx.setTransform(sx, 0, 0, sy, tx, ty);
    ctx.imageSmoothingEnabled = this.scale < 1;
    ctx.drawImage(this.base, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.overlay, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.drawMarks();
  }

  drawMarks() {
    const ctx = this.ctx;
    if (this.drag && this.drag.path) this.drawPath(this.drag.kind, this.drag.path);
    const box = this.drag && this.drag.kind === "box" ? this.drag.box : this.marks.box;
    if (box) {
      const [a, b] = [this.toScreen(box[0] + 0.5, box[1] + 0.5), this.toScreen(box[2] + 0.5, box[3] + 0.5)];
      ctx.strokeStyle = "#4fc3f7";
      ctx.lineWidth = 2;
      ctx.setLineDash([6, 4]);
      ctx.strokeRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
      ctx.setLineDash([]);
    }
    for (const [x, y, pos] of this.marks.clicks) {
      const [px, py] = this.toScreen(x + 0.5, y + 0.5);
      ctx.beginPath();
      ctx.arc(px, py, 6, 0, 2 * Math.PI);
      ctx.fillStyle = pos ? "#2ecc40" : "#ff4136";
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
      ctx.fillStyle = "#fff";
      ctx.fillRect(px - 3, py - 1, 6, 2);
      if (pos) ctx.fillRect(px - 1, py - 3, 2, 6);
    }
  }

  // the stroke being drawn: a scribble as a line of its sign's colour, a lasso as a dashed closed outline
  drawPath(kind, path) {
    if (path.length < 2) return;
    const ctx = this.ctx;
    ctx.beginPath();
    path.forEach(([x, y], i) => {
      const [px, py] = this.toScreen(x + 0.5, y + 0.5);
      if (i) ctx.lineTo(px, py);
      else ctx.moveTo(px, py);
    });
    if (kind === "lasso") ctx.closePath();
    ctx.lineWidth = 2;
    ctx.strokeStyle = kind === "lasso" ? "#4fc3f7" : this.positive ? "#2ecc40" : "#ff4136";
    ctx.setLineDash(kind === "lasso" ? [6, 4] : []);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // ---- mouse --------------------------------------------------------------------------------------
  _bind() {
    const c = this.canvas;
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => this._down(e));
    c.addEventListener("pointermove", (e) => this._move(e));
    c.addEventListener("pointerup", (e) => this._up(e));
    c.addEventListener("wheel", (e) => this._wheel(e), { passive: false });
  }

  _pos(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  _down(e) {
    if (!this.img) return;
    this.canvas.setPointerCapture(e.pointerId);
    const [sx, sy] = this._pos(e);
    const [u, v] = this.toImage(sx, sy);
    const pan = e.button === 1 || (e.button === 0 && e.shiftKey);
    const drawn = ["box", "scribble", "lasso"].includes(this.tool) ? this.tool : "left";
    let kind = pan ? "pan" : e.button === 2 ? "right" : drawn;
    this.drag = { kind, start: [sx, sy], last: [sx, sy], u, v, moved: false, win: [...this.window] };
    if (kind === "box") this.drag.box = null;
    if (kind === "scribble" || kind === "lasso") this.drag.path = [[u - 0.5, v - 0.5]];
  }

  _move(e) {
    const d = this.drag;
    if (!d) return;
    const [sx, sy] = this._pos(e);
    const dx = sx - d.last[0],
      dy = sy - d.last[1];
    if (Math.hypot(sx - d.start[0], sy - d.start[1]) > 4) d.moved = true;
    d.last = [sx, sy];
    if (!d.moved) return;
    if (d.kind === "pan" || d.kind === "left") {
      this.offset = [this.offset[0] + dx, this.offset[1] + dy];
      this.draw();
    } else if (d.kind === "right") {
      const ww = Math.max(1, d.win[0] + (sx - d.start[0]) * (d.win[0] / 200));
      const wl = d.win[1] + (sy - d.start[1]) * (d.win[0] / 400);
      this.h.window(ww, wl);
    } else if (d.path) {
      // image pixel coordinates, one every 2 screen pixels (the server clamps them into the plane)
      const [u, v] = this.toImage(sx, sy);
      const [pu, pv] = d.path[d.path.length - 1];
      if (Math.hypot(u - 0.5 - pu, v - 0.5 - pv) * this.scale >= 2 && d.path.length < 5000) {
        d.path.push([u - 0.5, v - 0.5]);
        this.draw();
      }
    } else if (d.kind === "box") {
      const [u, v] = this.toImage(sx, sy);
      const [x0, y0] = this.pixel(Math.min(d.u, u), Math.min(d.v, v));
      const [x1, y1] = this.pixel(Math.max(d.u, u), Math.max(d.v, v));
      d.box = [x0, y0, x1, y1].map(Math.round);
      this.draw();
    }
  }

  _up(e) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    const clickLike = d.kind === "left" || d.kind === "right" || d.kind === "scribble";
    if (!d.moved && clickLike && this.inside(d.u, d.v)) {
      const [x, y] = this.pixel(d.u, d.v).map(Math.round);
      this.h.click(x, y, d.kind === "left" ? this.positive : false);
    } else if (d.kind === "box" && d.box && d.moved) {
      this.h.box(...d.box);
    } else if (d.path && d.moved && d.path.length >= 2) {
      const pts = d.path.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
      this.h.stroke(d.kind, pts, d.kind === "lasso" ? true : this.positive);
    }
    this.draw();
  }

  _wheel(e) {
    e.preventDefault();
    const [sx, sy] = this._pos(e);
    if (e.ctrlKey || e.metaKey) this.zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, sx, sy);
    else this.h.scroll(e.deltaY > 0 ? 1 : -1);
  }
}
