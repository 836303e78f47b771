// Loading frames for the viewports: the image on screen first, then the rest of each series
// outward from it, a few requests at a time, into the shared frame cache. Native grayscale
// frames of one instance are asked for several per request (a frame list, PS3.18 10.4.1.1.4);
// color frames come rendered by the archive, one per request.

import { RequestFailed } from "./dicomweb.js";
import { decodeGray } from "./pixels.js";
import { framesOf, imageBytes } from "./stack.js";

// Browsers open six connections per host over HTTP/1.1; more requests would only queue.
const CONCURRENCY = 6;
const BATCH_FRAMES = 8;
const BATCH_BYTES = 4 << 20;
// Viewports other than the active one wait this many images of distance longer.
const INACTIVE_PENALTY = 4;

export function frameKey(sop, frame) {
  return `${sop}/${frame}`;
}

/** Positions of a stack from `focus` outward: focus, +1, -1, +2, -2, ... */
function* outward(focus, count) {
  yield focus;
  for (let d = 1; d < count; d++) {
    const ahead = focus + d;
    const behind = focus - d;
    if (ahead >= count && behind < 0) return;
    if (ahead < count) yield ahead;
    if (behind >= 0) yield behind;
  }
}

export class Loader {
  constructor(dicomweb, cache) {
    this.dicomweb = dicomweb;
    this.cache = cache;
    this.views = new Set();
    this.inflight = new Set();
    this.failed = new Map();
    this.rendered = new Set(); // instances the archive could not send as native pixels
    this.running = 0;
    this.fatal = null;
    this.scheduled = false;
  }

  attach(view) {
    this.views.add(view);
    this.poke();
  }

  detach(view) {
    this.views.delete(view);
  }

  /** Whether frames of `image` come rendered by the archive (color, or no native offer). */
  isRendered(image) {
    return !image.gray || this.rendered.has(image.sop);
  }

  failure(key) {
    return this.fatal || this.failed.get(key);
  }

  /** Look for work soon (after the current task, so many pokes make one pass). */
  poke() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  pump() {
    while (this.running < CONCURRENCY && !this.fatal) {
      const task = this.next();
      if (!task) return;
      // While an image on screen is still on its way, prefetching would only slow it down.
      if (task.rank > 0 && this.awaitingShown()) return;
      this.run(task);
    }
  }

  awaitingShown() {
    for (const view of this.views) {
      const image = view.current();
      if (!image) continue;
      if (view.shownFrames(image).some((n) => this.inflight.has(frameKey(image.sop, n)))) return true;
    }
    return false;
  }

  missing(key) {
    return !this.cache.has(key) && !this.inflight.has(key) && !this.failed.has(key);
  }

  /** The most urgent frames to ask for: [image, frame numbers], or null when all is done. */
  next() {
    let best = null;
    const share = (this.cache.budget * 0.8) / Math.max(1, this.views.size);
    for (const view of this.views) {
      const stack = view.stack;
      if (!stack || stack.images.length === 0) continue;
      const penalty = view.active ? 0 : INACTIVE_PENALTY;
      let rank = 0;
      let bytes = 0;
      for (const position of outward(view.index, stack.images.length)) {
        if (best && rank + penalty >= best.rank) break;
        const image = stack.images[position];
        bytes += imageBytes(image);
        if (rank > 0 && bytes > share) break; // the rest would push out what is near
        const frames = rank === 0 ? view.shownFrames(image) : framesOf(image);
        const frame = frames.find((n) => this.missing(frameKey(image.sop, n)));
        if (frame !== undefined) {
          best = { rank: rank + penalty, view, image, position, frames: [frame] };
          break;
        }
        rank++;
      }
    }
    if (best && (best.rank > 0 || best.image.tiles) && !this.isRendered(best.image)) {
      this.batch(best); // the image on screen alone, unless it is made of tiles
    }
    return best;
  }

  /** More frames of the same instance for one request, in the order they will be wanted. */
  batch(task) {
    const { view, image } = task;
    if (image.frames < 2) return;
    const stack = view.stack;
    let bytes = image.frameBytes;
    const add = (frame) => {
      if (task.frames.length >= BATCH_FRAMES || bytes + image.frameBytes > BATCH_BYTES) return false;
      if (!task.frames.includes(frame) && this.missing(frameKey(image.sop, frame))) {
        task.frames.push(frame);
        bytes += image.frameBytes;
      }
      return true;
    };
    if (image.tiles) {
      for (const frame of view.shownFrames(image)) if (!add(frame)) return;
      return;
    }
    for (const position of outward(task.position, stack.images.length)) {
      const other = stack.images[position];
      if (other.sop === image.sop && !add(other.frame)) return;
    }
  }

  async run(task) {
    const { image, frames } = task;
    const keys = frames.map((n) => frameKey(image.sop, n));
    keys.forEach((key) => this.inflight.add(key));
    this.running++;
    try {
      if (this.isRendered(image)) {
        const bitmap = await this.dicomweb.renderedFrame(image.series, image.sop, frames[0]);
        this.cache.set(keys[0], bitmap, bitmap.width * bitmap.height * 4);
      } else {
        const bodies = await this.dicomweb.nativeFrames(image.series, image.sop, frames, image.frameBytes);
        const count = image.tileWidth * image.tileHeight;
        bodies.forEach((body, i) => {
          const pixels = decodeGray(body, image.gray, count);
          this.cache.set(keys[i], pixels, pixels.indices.byteLength);
        });
      }
    } catch (error) {
      if (error instanceof RequestFailed && error.status === 406 && !this.isRendered(image)) {
        this.rendered.add(image.sop); // not decodable to native here: let the archive render it
      } else if (error instanceof RequestFailed && error.status === 401) {
        this.fatal = error;
      } else {
        keys.forEach((key) => this.failed.set(key, error));
      }
    } finally {
      keys.forEach((key) => this.inflight.delete(key));
      this.running--;
      for (const view of this.views) view.framesArrived(keys);
      this.poke();
    }
  }
}
