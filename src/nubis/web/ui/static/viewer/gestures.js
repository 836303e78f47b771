// Gestures on a viewport: a drag (mouse or one finger) does what the chosen tool does, the
// middle or right button and two fingers pan and zoom, the wheel scrolls through the stack,
// and a series dragged from the list is dropped in.

import { valueRange } from "./pixels.js";

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

export class Gestures {
  constructor(view) {
    this.view = view;
    this.pointers = new Map();
    this.gesture = null;
    this.wheelDelta = 0;
    this.anchor = { x: 0, y: 0 }; // where a zoom drag started
    this.scrollRest = 0; // drag distance not yet turned into a slice
    this.bind();
  }

  bind() {
    const view = this.view;
    const el = view.el;
    view.slider.addEventListener("input", () => view.setIndex(Number(view.slider.value) - 1));
    el.addEventListener("pointerdown", (event) => this.pointerDown(event));
    el.addEventListener("pointermove", (event) => this.pointerMove(event));
    el.addEventListener("pointerup", (event) => this.pointerUp(event));
    el.addEventListener("pointercancel", (event) => this.pointerUp(event));
    el.addEventListener("contextmenu", (event) => event.preventDefault());
    el.addEventListener("wheel", (event) => this.wheel(event), { passive: false });
    el.addEventListener("dblclick", () => view.app.toggleMaximized(view));
    el.addEventListener("dragover", (event) => {
      if (event.dataTransfer.types.includes("application/x-nubis-series")) event.preventDefault();
    });
    el.addEventListener("drop", (event) => {
      const uid = event.dataTransfer.getData("application/x-nubis-series");
      if (!uid) return;
      event.preventDefault();
      view.app.setActive(view);
      view.setSeries(uid);
    });
  }

  local(event) {
    const box = this.view.canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    return { x: (event.clientX - box.left) * ratio, y: (event.clientY - box.top) * ratio };
  }

  pointerDown(event) {
    const view = this.view;
    if (event.target === view.slider) return;
    view.app.setActive(view);
    view.el.setPointerCapture(event.pointerId);
    this.pointers.set(event.pointerId, this.local(event));
    if (this.pointers.size === 2) {
      this.gesture = "pinch";
    } else if (this.pointers.size === 1) {
      let tool = view.app.tool;
      if (event.button === 1 || event.shiftKey) tool = "pan";
      else if (event.button === 2 || event.ctrlKey) tool = "zoom";
      this.gesture = tool;
      this.anchor = this.local(event);
      this.scrollRest = 0;
    }
    event.preventDefault();
  }

  pointerMove(event) {
    const view = this.view;
    const previous = this.pointers.get(event.pointerId);
    if (!previous) return;
    const point = this.local(event);
    if (this.gesture === "pinch" && this.pointers.size === 2) {
      const [a, b] = [...this.pointers.entries()].map(([id, p]) => (id === event.pointerId ? point : p));
      const [pa, pb] = [...this.pointers.values()];
      const before = Math.hypot(pa.x - pb.x, pa.y - pb.y) || 1;
      const after = Math.hypot(a.x - b.x, a.y - b.y) || 1;
      const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      const midBefore = { x: (pa.x + pb.x) / 2, y: (pa.y + pb.y) / 2 };
      view.zoomAt(after / before, midBefore.x, midBefore.y);
      view.pan(mid.x - midBefore.x, mid.y - midBefore.y);
    } else if (this.pointers.size === 1) {
      this.drag(point.x - previous.x, point.y - previous.y);
    }
    this.pointers.set(event.pointerId, point);
  }

  pointerUp(event) {
    this.pointers.delete(event.pointerId);
    // After a pinch, the finger left on the glass does nothing until it is lifted too.
    if (this.pointers.size === 0) this.gesture = null;
    else if (this.gesture === "pinch") this.gesture = "done";
  }

  drag(dx, dy) {
    const view = this.view;
    const ratio = window.devicePixelRatio || 1;
    const image = view.current();
    if (!image) return;
    if (this.gesture === "pan") {
      view.pan(dx, dy);
    } else if (this.gesture === "zoom") {
      view.zoomAt(Math.exp(-dy / (100 * ratio)), this.anchor.x, this.anchor.y); // up: closer
    } else if (this.gesture === "scroll") {
      // A swipe across the viewport's height passes through the whole stack (3 to 20 px a slice).
      const perSlice = clamp(view.el.clientHeight / view.stack.images.length, 3, 20) * ratio;
      this.scrollRest += dy;
      const steps = Math.trunc(this.scrollRest / perSlice);
      if (steps) {
        this.scrollRest -= steps * perSlice;
        view.step(-steps); // finger up: further into the stack
      }
    } else if (this.gesture === "wl") {
      const window = view.windowOf(image);
      const pixels = view.grayPixels(image);
      if (!window || !pixels) return;
      const range = valueRange(pixels, image.rescale);
      const sensitivity = Math.max((range.high - range.low) / 1024, 0.05) / ratio;
      view.setWindow(window.center + dy * sensitivity, window.width + dx * sensitivity);
    }
  }

  wheel(event) {
    const view = this.view;
    event.preventDefault();
    view.app.setActive(view);
    if (event.ctrlKey || event.metaKey) {
      const point = this.local(event);
      view.zoomAt(Math.exp(-event.deltaY / 300), point.x, point.y);
      return;
    }
    // One slice a notch; a trackpad's small deltas add up to one.
    const delta = event.deltaMode === 0 ? event.deltaY : event.deltaY * 40;
    if (Math.abs(delta) >= 40) {
      this.wheelDelta = 0;
      view.step(Math.sign(delta));
      return;
    }
    this.wheelDelta += delta;
    if (Math.abs(this.wheelDelta) >= 40) {
      view.step(Math.sign(this.wheelDelta));
      this.wheelDelta = 0;
    }
  }
}
