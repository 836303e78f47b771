// The built-in viewer: layouts of viewports, the series list, tools, presets, cine, keys and
// the metadata view. Reads go through DICOMweb with the session cookie (dicomweb.js).

import { FrameCache } from "./cache.js";
import { TAG, text } from "./dataset.js";
import { DicomWeb } from "./dicomweb.js";
import { Loader } from "./loader.js";
import { MetadataView } from "./metadata.js";
import { buildStack } from "./stack.js";
import { Viewport } from "./viewport.js";

const LAYOUTS = { "1x1": 1, "1x2": 2, "2x2": 4 };
const MB = 1 << 20;

/** The frame cache's budget: a share of the device's memory where the browser tells it. */
function memoryBudget() {
  const gigabytes = navigator.deviceMemory || 8;
  return Math.min(1024, Math.max(256, gigabytes * 64)) * MB;
}

class App {
  constructor(root) {
    this.root = root;
    this.dicomweb = new DicomWeb(root.dataset.dicomweb, root.dataset.study);
    this.cache = new FrameCache(memoryBudget());
    this.loader = new Loader(this.dicomweb, this.cache);
    this.stacks = new Map();
    this.viewports = [];
    this.active = null;
    // A finger scrolls through the images by default, a mouse drags the window.
    this.tool = matchMedia("(pointer: coarse)").matches ? "scroll" : "wl";
    this.drawnOnce = false;
    this.grid = root.querySelector(".viewports");
    this.template = document.getElementById("viewport-template");
    this.seriesItems = [...root.querySelectorAll(".series-item")];
    this.metadata = new MetadataView(document.getElementById("metadata-dialog"));
    this.fps = root.querySelector("input[name=fps]");
  }

  /** The stack of a series, its metadata asked for once (one request per series). */
  stackOf(uid) {
    let stack = this.stacks.get(uid);
    if (!stack) {
      stack = this.dicomweb.seriesMetadata(uid).then((metadata) => {
        const built = buildStack(uid, metadata);
        performance.mark("series-ready");
        return built;
      });
      stack.catch(() => this.stacks.delete(uid)); // a later attempt may succeed
      this.stacks.set(uid, stack);
    }
    return stack;
  }

  start(firstSeries) {
    this.stackOf(firstSeries);
    this.bindToolbar();
    this.bindSeriesList();
    this.bindKeys();
    this.setLayout("1x1", [firstSeries]);
    // Thumbnails wait for the first image: they would compete with it for connections.
    setTimeout(() => this.firstDrawn(), 3000);
  }

  firstDrawn() {
    if (this.drawnOnce) return;
    this.drawnOnce = true;
    for (const img of this.root.querySelectorAll("img[data-src]")) {
      img.src = img.dataset.src;
      img.removeAttribute("data-src");
    }
  }

  // ------------------------------------------------------------------ layout
  setLayout(name, series = []) {
    const count = LAYOUTS[name];
    if (!count) return;
    this.grid.dataset.layout = name;
    this.grid.classList.remove("maximized");
    for (const viewport of this.viewports) viewport.el.hidden = false;
    while (this.viewports.length > count) {
      const viewport = this.viewports.pop();
      viewport.pause();
      this.loader.detach(viewport);
      this.cache.pin(viewport, []);
      viewport.el.remove();
    }
    const shown = new Set(this.viewports.map((v) => v.seriesUid));
    const unshown = this.seriesItems.map((item) => item.dataset.series).filter((uid) => !shown.has(uid));
    while (this.viewports.length < count) {
      const element = this.template.content.firstElementChild.cloneNode(true);
      this.grid.append(element);
      const viewport = new Viewport(this, element);
      this.viewports.push(viewport);
      this.loader.attach(viewport);
      const uid = series.shift() || unshown.shift();
      if (uid) viewport.setSeries(uid);
      else viewport.clear();
    }
    for (const button of this.root.querySelectorAll("[data-layout]")) {
      button.setAttribute("aria-pressed", String(button.dataset.layout === name));
    }
    if (!this.viewports.includes(this.active)) this.setActive(this.viewports[0]);
  }

  toggleMaximized(viewport) {
    if (this.viewports.length < 2) return;
    const maximized = !this.grid.classList.contains("maximized");
    this.grid.classList.toggle("maximized", maximized);
    for (const other of this.viewports) other.el.hidden = maximized && other !== viewport;
    this.setActive(viewport);
  }

  setActive(viewport) {
    if (!viewport || this.active === viewport) return;
    for (const other of this.viewports) {
      other.active = other === viewport;
      other.el.classList.toggle("active", other.active);
    }
    this.active = viewport;
    this.viewportChanged(viewport);
    this.loader.poke();
  }

  /** Toolbar state follows the active viewport (its series' presets, its cine rate). */
  viewportChanged(viewport) {
    if (viewport !== this.active) return;
    const stack = viewport.stack;
    const ct = Boolean(stack && stack.modality === "CT");
    for (const button of this.root.querySelectorAll("[data-preset]")) {
      if (button.dataset.preset !== "default") button.hidden = !ct;
    }
    this.fps.value = String(viewport.fps);
    const cine = this.root.querySelector("[data-action=cine]");
    cine.textContent = viewport.playing ? "Pause" : "Play";
    cine.setAttribute("aria-pressed", String(viewport.playing));
    for (const item of this.seriesItems) {
      item.setAttribute("aria-current", String(item.dataset.series === viewport.seriesUid));
    }
  }

  // ------------------------------------------------------------------ controls
  setTool(tool) {
    this.tool = tool;
    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
    }
  }

  bindToolbar() {
    const on = (selector, handler) => {
      for (const element of this.root.querySelectorAll(selector)) {
        element.addEventListener("click", () => handler(element));
      }
    };
    on("[data-layout]", (button) => this.setLayout(button.dataset.layout));
    on("[data-tool]", (button) => this.setTool(button.dataset.tool));
    on("[data-preset]", (button) => this.active?.applyPreset(button.dataset.preset));
    on("[data-action]", (button) => this.act(button.dataset.action));
    this.fps.addEventListener("change", () => this.active?.setFps(Number(this.fps.value)));
    this.setTool(this.tool);
  }

  act(action) {
    const viewport = this.active;
    if (action === "series") {
      this.root.classList.toggle("series-toggled");
      return;
    }
    if (!viewport) return;
    if (action === "invert") viewport.toggleInvert();
    else if (action === "fit") viewport.resetView();
    else if (action === "actual") viewport.actualSize();
    else if (action === "reset") viewport.reset();
    else if (action === "cine") viewport.toggleCine();
    else if (action === "metadata") this.showMetadata();
  }

  showMetadata() {
    const image = this.active?.current();
    if (!image) return;
    const ds = image.instance;
    const title = `Instance ${text(ds, TAG.InstanceNumber) || ""} · ${text(ds, TAG.SeriesDescription) || "series"}`;
    this.metadata.show(ds, title);
  }

  bindSeriesList() {
    for (const item of this.seriesItems) {
      item.addEventListener("click", () => {
        this.active?.setSeries(item.dataset.series);
        this.root.classList.remove("series-toggled");
      });
      item.addEventListener("dragstart", (event) => {
        event.dataTransfer.setData("application/x-nubis-series", item.dataset.series);
        event.dataTransfer.effectAllowed = "copy";
      });
    }
  }

  bindKeys() {
    document.addEventListener("keydown", (event) => {
      const target = event.target;
      if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
      if (document.querySelector("dialog[open]") || event.altKey || event.ctrlKey || event.metaKey) return;
      const viewport = this.active;
      if (!viewport || !viewport.stack) return;
      const page = Math.max(1, Math.round(viewport.stack.images.length / 10));
      const keys = {
        ArrowDown: () => viewport.step(1),
        ArrowRight: () => viewport.step(1),
        ArrowUp: () => viewport.step(-1),
        ArrowLeft: () => viewport.step(-1),
        PageDown: () => viewport.step(page),
        PageUp: () => viewport.step(-page),
        Home: () => viewport.setIndex(0),
        End: () => viewport.setIndex(viewport.stack.images.length - 1),
        " ": () => viewport.toggleCine(),
        i: () => viewport.toggleInvert(),
        r: () => viewport.reset(),
        f: () => viewport.resetView(),
        m: () => this.showMetadata(),
      };
      const handler = keys[event.key];
      if (!handler) return;
      event.preventDefault();
      handler();
    });
  }
}

performance.mark("viewer-start"); // bench/viewer.py reads these marks
const root = document.getElementById("viewer");
const app = new App(root);
app.start(root.dataset.series);
