// One viewport: a series on a canvas, its position in the stack, window, zoom and pan, cine,
// and the overlay of key attributes. What the mouse, wheel and fingers do is in gestures.js.

import { TAG, number, text } from "./dataset.js";
import { frameKey } from "./loader.js";
import { framesOf } from "./stack.js";
import { Gestures } from "./gestures.js";
import { fullRangeWindow, grayTable, paint, valueRange } from "./pixels.js";

// Window presets in Hounsfield units (center, width), as radiology departments commonly use.
const CT_PRESETS = {
  brain: { center: 40, width: 80 },
  lung: { center: -600, width: 1500 },
  bone: { center: 400, width: 1800 },
  abdomen: { center: 50, width: 400 },
};
const DEFAULT_FPS = 10;
const MAX_ZOOM = 64;
const MIN_ZOOM = 1 / 64;

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function round(value) {
  return Math.abs(value) >= 100 ? Math.round(value) : Math.round(value * 10) / 10;
}

function date(value) {
  return /^\d{8}$/.test(value) ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}` : value;
}

function line(parent, value) {
  if (!value) return;
  const div = document.createElement("div");
  div.textContent = value; // DICOM text is shown as text, never as markup
  parent.append(div);
}

export class Viewport {
  constructor(app, element) {
    this.app = app;
    this.el = element;
    this.canvas = element.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.corners = {
      tl: element.querySelector(".tl"),
      tr: element.querySelector(".tr"),
      bl: element.querySelector(".bl"),
      br: element.querySelector(".br"),
    };
    this.message = element.querySelector(".message");
    this.slider = element.querySelector(".slider");
    this.seriesUid = null;
    this.stack = null;
    this.index = 0;
    this.active = false;
    this.window = null; // {center, width, fn} in modality units, once the user chose one
    this.rangeWindow = null; // for images without a stored window: the first one's range
    this.invert = false;
    this.zoom = 1; // relative to fitting the image into the viewport
    this.panX = 0; // device pixels from centered
    this.panY = 0;
    this.fps = DEFAULT_FPS;
    this.playing = false;
    this.draws = 0;
    this.loadedCount = 0;
    this.view = null; // the image-to-canvas transform of the last draw
    this.scratch = document.createElement("canvas"); // a grayscale image at its own size
    this.imageData = null;
    this.tables = new Map();
    this.tileCanvases = new Map();
    this.redrawRequested = false;
    this.gestures = new Gestures(this);
    new ResizeObserver(() => this.invalidate()).observe(element);
  }

  // ------------------------------------------------------------------ series and position
  async setSeries(uid) {
    this.pause();
    this.seriesUid = uid;
    this.stack = null;
    this.view = null;
    this.el.dataset.series = uid;
    delete this.el.dataset.drawn;
    this.el.dataset.state = "loading";
    this.show("Loading series…");
    let stack;
    try {
      stack = await this.app.stackOf(uid);
    } catch (error) {
      if (this.seriesUid === uid) this.fail(error);
      return;
    }
    if (this.seriesUid !== uid) return; // another series was dropped here meanwhile
    this.stack = stack;
    this.index = 0;
    this.window = null;
    this.rangeWindow = null;
    this.invert = false;
    this.resetView();
    this.fps = stack.fps || DEFAULT_FPS;
    this.slider.max = String(Math.max(1, stack.images.length));
    this.slider.hidden = stack.images.length < 2;
    this.el.dataset.count = String(stack.images.length);
    this.countLoaded();
    if (stack.images.length === 0) {
      this.fail(new Error("this series has no images"));
      return;
    }
    this.moved();
    this.app.viewportChanged(this);
  }

  clear() {
    this.pause();
    this.seriesUid = null;
    this.stack = null;
    delete this.el.dataset.series;
    this.el.dataset.state = "empty";
    this.show("Drop a series here");
    this.pin();
    this.invalidate();
  }

  current() {
    return this.stack ? this.stack.images[this.index] : undefined;
  }

  setIndex(index) {
    if (!this.stack || this.stack.images.length === 0) return;
    const next = clamp(Math.round(index), 0, this.stack.images.length - 1);
    if (next === this.index) return;
    this.index = next;
    this.moved();
  }

  step(delta) {
    this.setIndex(this.index + delta);
  }

  moved() {
    this.el.dataset.index = String(this.index);
    this.slider.value = String(this.index + 1);
    this.pin();
    this.app.loader.poke();
    this.invalidate();
  }

  /** Keep the frames on screen in the cache whatever else is loaded. */
  pin() {
    const image = this.current();
    this.app.cache.pin(this, image ? this.shownFrames(image).map((n) => frameKey(image.sop, n)) : []);
  }

  /**
   * The frames that show `image` now: its one frame, or the tiles of a whole-slide image that
   * lie in (or a tile beyond) the view, nearest its middle first, as many as half the frame
   * cache holds: a level too large for that shows the middle, and the rest as one pans to it.
   */
  shownFrames(image) {
    if (!image.tiles) return [image.frame];
    const view = this.transform(image);
    const left = -view.ox / view.scale - image.tileWidth;
    const top = -view.oy / view.scale - image.tileHeight;
    const right = (this.canvas.width - view.ox) / view.scale + image.tileWidth;
    const bottom = (this.canvas.height - view.oy) / view.scale + image.tileHeight;
    const cx = (left + right) / 2;
    const cy = (top + bottom) / 2;
    const tileBytes = image.tileWidth * image.tileHeight * (image.gray ? image.gray.bitsAllocated / 8 : 4);
    const most = Math.max(1, Math.floor((this.app.cache.budget / 2) / tileBytes));
    return image.tiles
      .filter((t) => t.x < right && t.x + t.width > left && t.y < bottom && t.y + t.height > top)
      .map((t) => [Math.hypot(t.x + t.width / 2 - cx, t.y + t.height / 2 - cy), t.frame])
      .sort((a, b) => a[0] - b[0])
      .slice(0, most)
      .map((pair) => pair[1]);
  }

  framesArrived(keys) {
    const image = this.current();
    if (!image) return;
    this.countLoaded();
    const prefix = `${image.sop}/`;
    if (keys.some((key) => key.startsWith(prefix))) this.invalidate();
    else this.overlay(image, this.view);
  }

  /** How much of the series is in the cache (shown until all of it is, and as data-loaded). */
  countLoaded() {
    const images = this.stack ? this.stack.images : [];
    this.loadedCount = images.reduce((sum, image) => sum + (this.loaded(image) ? 1 : 0), 0);
    this.el.dataset.loaded = String(this.loadedCount);
  }

  loaded(image) {
    if (!image) return false;
    const frames = image === this.current() ? this.shownFrames(image) : framesOf(image);
    return frames.every((n) => this.app.cache.has(frameKey(image.sop, n)));
  }

  // ------------------------------------------------------------------ window, zoom, pan
  isGray(image) {
    return Boolean(image.gray) && !this.app.loader.isRendered(image);
  }

  grayPixels(image) {
    if (!image || !this.isGray(image)) return null;
    const frame = this.shownFrames(image).find((n) => this.app.cache.has(frameKey(image.sop, n)));
    return frame === undefined ? null : this.app.cache.get(frameKey(image.sop, frame));
  }

  /**
   * The window an image is shown with: the user's, else the image's own stored one (per frame
   * for enhanced objects), else the value range of the first image shown, kept while
   * scrolling so that brightness does not jump from image to image.
   */
  windowOf(image) {
    if (this.window) return this.window;
    if (image.window) return image.window;
    if (!this.rangeWindow) {
      const pixels = this.grayPixels(image);
      if (pixels) this.rangeWindow = fullRangeWindow(valueRange(pixels, image.rescale));
    }
    return this.rangeWindow;
  }

  setWindow(center, width, fn) {
    const image = this.current();
    if (!image || !this.isGray(image)) return;
    const base = this.windowOf(image) || { fn: "LINEAR" };
    this.window = { center, width: Math.max(width, 1), fn: fn || base.fn };
    this.invalidate();
  }

  applyPreset(name) {
    if (name === "default") {
      this.window = null;
      this.invalidate();
    } else if (CT_PRESETS[name]) {
      this.setWindow(CT_PRESETS[name].center, CT_PRESETS[name].width, "LINEAR");
    }
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.invalidate();
  }

  resetView() {
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.invalidate();
  }

  reset() {
    this.window = null;
    this.invert = false;
    this.resetView();
  }

  /** One image pixel to one screen pixel, the image's middle in the viewport's middle. */
  actualSize() {
    const image = this.current();
    if (!image) return;
    this.zoom = 1 / this.fitScale(image);
    this.panX = 0;
    this.panY = 0;
    this.invalidate();
  }

  fitScale(image) {
    this.resize();
    return Math.min(this.canvas.width / image.width, this.canvas.height / image.height) || 1;
  }

  /** Image to canvas: canvas = offset + image * scale (device pixels, offsets whole). */
  transform(image) {
    const scale = this.fitScale(image) * this.zoom;
    return {
      scale,
      ox: Math.round(this.canvas.width / 2 + this.panX - (image.width * scale) / 2),
      oy: Math.round(this.canvas.height / 2 + this.panY - (image.height * scale) / 2),
    };
  }

  /** Zoom by `factor` keeping the image point under canvas point (x, y) in place. */
  zoomAt(factor, x, y) {
    const image = this.current();
    if (!image) return;
    const before = this.transform(image);
    const zoom = clamp(this.zoom * factor, MIN_ZOOM, MAX_ZOOM);
    const scale = before.scale * (zoom / this.zoom);
    const u = (x - before.ox) / before.scale;
    const v = (y - before.oy) / before.scale;
    this.zoom = zoom;
    this.panX = x - u * scale - this.canvas.width / 2 + (image.width * scale) / 2;
    this.panY = y - v * scale - this.canvas.height / 2 + (image.height * scale) / 2;
    this.invalidate();
  }

  pan(dx, dy) {
    this.panX += dx;
    this.panY += dy;
    this.invalidate();
  }

  // ------------------------------------------------------------------ cine
  play() {
    if (!this.stack || this.stack.images.length < 2 || this.playing) return;
    this.playing = true;
    this.el.dataset.playing = "true";
    this.lastAdvance = performance.now();
    const tick = (now) => {
      if (!this.playing) return;
      const interval = 1000 / this.fps;
      if (now - this.lastAdvance >= interval) {
        const next = (this.index + 1) % this.stack.images.length;
        // Wait for a frame still loading rather than skip it.
        if (this.loaded(this.stack.images[next])) {
          this.lastAdvance = now - Math.min(interval, now - this.lastAdvance - interval);
          this.setIndex(next);
        }
      }
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    this.app.viewportChanged(this);
    this.invalidate();
  }

  pause() {
    if (!this.playing) return;
    this.playing = false;
    this.el.dataset.playing = "false";
    this.app.viewportChanged(this);
    this.invalidate();
  }

  toggleCine() {
    if (this.playing) this.pause();
    else this.play();
  }

  setFps(fps) {
    if (Number.isFinite(fps) && fps > 0) this.fps = clamp(fps, 1, 60);
    this.invalidate();
  }

  // ------------------------------------------------------------------ drawing
  invalidate() {
    if (this.redrawRequested) return;
    this.redrawRequested = true;
    requestAnimationFrame(() => {
      this.redrawRequested = false;
      this.draw();
    });
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(this.el.clientWidth * ratio));
    const height = Math.max(1, Math.round(this.el.clientHeight * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
  }

  show(message) {
    this.message.textContent = message || "";
    this.message.hidden = !message;
  }

  fail(error) {
    this.el.dataset.state = "error";
    this.show(error.message || String(error));
  }

  table(image, pixels, window) {
    const invert = image.gray.monochrome1 !== this.invert;
    const { slope, intercept } = image.rescale;
    const key = [image.gray.bitsStored, pixels.offset, slope, intercept, window.center, window.width, window.fn, invert].join("|");
    let table = this.tables.get(key);
    if (!table) {
      if (this.tables.size > 8) this.tables.clear();
      table = grayTable(image.gray, pixels.offset, image.rescale, window, invert);
      this.tables.set(key, table);
    }
    return { table, key };
  }

  /** A grayscale frame painted through the window into a canvas of its own size. */
  paintGray(image, pixels, window, canvas, key, width, height) {
    const { table, key: tableKey } = this.table(image, pixels, window);
    const wanted = `${key}#${tableKey}`;
    if (canvas.dataset.painted === wanted) return canvas;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    let data = this.imageData;
    if (!data || data.width !== width || data.height !== height) {
      data = new ImageData(width, height);
      this.imageData = data;
    }
    paint(pixels.indices, table, data.data);
    canvas.getContext("2d").putImageData(data, 0, 0);
    canvas.dataset.painted = wanted;
    return canvas;
  }

  draw() {
    this.resize();
    const ctx = this.ctx;
    const image = this.current();
    if (!image) {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      this.overlay(null);
      return;
    }
    const failure = this.app.loader.failure(frameKey(image.sop, image.frame));
    if (failure) {
      this.fail(failure);
      this.overlay(image);
      return;
    }
    const complete = this.loaded(image);
    if (image.tiles) {
      this.pin(); // the tiles in view change with zoom and pan
      if (!complete) this.app.loader.poke();
    }
    if (!complete && !image.tiles) {
      // Keep the last picture while the next one loads: scrolling stays steady.
      this.el.dataset.state = "loading";
      this.overlay(image);
      return;
    }
    const gray = this.isGray(image);
    const view = this.transform(image);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.filter = "none";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = view.scale < 1 ? "high" : "low";
    if (!gray && this.invert) ctx.filter = "invert(1)";
    if (image.tiles) {
      this.drawTiles(image, view, gray);
    } else {
      const source = this.app.cache.get(frameKey(image.sop, image.frame));
      const picture = gray
        ? this.paintGray(image, source, this.windowOf(image), this.scratch, image.key, image.width, image.height)
        : source;
      ctx.drawImage(picture, view.ox, view.oy, image.width * view.scale, image.height * view.scale);
    }
    ctx.filter = "none";
    this.el.dataset.state = complete ? "ready" : "loading";
    this.show("");
    this.view = view;
    this.overlay(image, view);
    this.el.dataset.scale = String(view.scale);
    this.el.dataset.ox = String(view.ox);
    this.el.dataset.oy = String(view.oy);
    if (complete) {
      this.draws++;
      this.el.dataset.drawn = String(this.index);
      this.el.dataset.draws = String(this.draws);
      this.el.dispatchEvent(
        new CustomEvent("nubis:drawn", { detail: { index: this.index, time: performance.now() } }),
      );
      this.app.firstDrawn();
    }
  }

  drawTiles(image, view, gray) {
    const ctx = this.ctx;
    const right = (x) => Math.round(view.ox + x * view.scale);
    const down = (y) => Math.round(view.oy + y * view.scale);
    const shown = new Set(this.shownFrames(image));
    for (const tile of image.tiles) {
      if (!shown.has(tile.frame)) continue;
      const key = frameKey(image.sop, tile.frame);
      const source = this.app.cache.get(key);
      if (!source) continue;
      let picture = source;
      if (gray) {
        let canvas = this.tileCanvases.get(key);
        if (!canvas) {
          if (this.tileCanvases.size > 4096) this.tileCanvases.clear();
          canvas = document.createElement("canvas");
          this.tileCanvases.set(key, canvas);
        }
        picture = this.paintGray(image, source, this.windowOf(image), canvas, key, image.tileWidth, image.tileHeight);
      }
      // Whole-pixel edges, computed from the tile's corners, leave no seams between tiles.
      const x0 = right(tile.x);
      const y0 = down(tile.y);
      ctx.drawImage(picture, 0, 0, tile.width, tile.height, x0, y0, right(tile.x + tile.width) - x0, down(tile.y + tile.height) - y0);
    }
  }

  overlay(image, view) {
    const { tl, tr, bl, br } = this.corners;
    for (const corner of [tl, tr, bl, br]) corner.replaceChildren();
    if (!image) return;
    const ds = image.instance;
    line(tl, text(ds, TAG.PatientName));
    line(tl, text(ds, TAG.PatientID));
    line(tr, date(text(ds, TAG.StudyDate)));
    line(tr, text(ds, TAG.StudyDescription));
    const seriesNumber = text(ds, TAG.SeriesNumber);
    line(tr, [seriesNumber && `S${seriesNumber}`, text(ds, TAG.SeriesDescription)].filter(Boolean).join(" "));
    const count = this.stack.images.length;
    const instanceNumber = number(ds, TAG.InstanceNumber);
    line(bl, `Im ${instanceNumber ?? "–"} (${this.index + 1}/${count})`);
    if (image.frames > 1 && !image.tiles) line(bl, `Fr ${image.frame}/${image.frames}`);
    if (image.tiles) line(bl, `${image.tiles.length} tiles`);
    const shown = this.isGray(image) ? this.windowOf(image) : null;
    if (shown) line(bl, `W ${round(shown.width)} L ${round(shown.center)}`);
    if (this.playing) line(bl, `Cine ${this.fps} fps`);
    if (view) line(br, `Zoom ${Math.round(view.scale * 100 / (window.devicePixelRatio || 1))}%`);
    line(br, `${image.width} × ${image.height}`);
    if (this.el.dataset.state === "loading") line(br, "Loading…");
    if (this.loadedCount < count) line(br, `Loaded ${this.loadedCount}/${count}`);
    if (this.invert) line(br, "Inverted");
  }
}
