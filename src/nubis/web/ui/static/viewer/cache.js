// Loaded frames, least recently used first out, within a memory budget. Frames on screen are
// pinned by their viewports and never dropped.

export class FrameCache {
  constructor(budget) {
    this.budget = budget;
    this.used = 0;
    this.entries = new Map();
    this.pins = new Map(); // owner -> Set of keys it shows
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key); // re-inserted last: most recently used
    this.entries.set(key, entry);
    return entry.value;
  }

  has(key) {
    return this.entries.has(key);
  }

  set(key, value, bytes) {
    const old = this.entries.get(key);
    if (old) this.drop(key, old);
    this.entries.set(key, { value, bytes });
    this.used += bytes;
    this.evict();
  }

  pin(owner, keys) {
    this.pins.set(owner, new Set(keys));
  }

  pinned(key) {
    for (const keys of this.pins.values()) if (keys.has(key)) return true;
    return false;
  }

  evict() {
    if (this.used <= this.budget) return;
    for (const [key, entry] of this.entries) {
      if (this.used <= this.budget) break;
      if (!this.pinned(key)) this.drop(key, entry);
    }
  }

  drop(key, entry) {
    this.entries.delete(key);
    this.used -= entry.bytes;
    if (entry.value && typeof entry.value.close === "function") entry.value.close(); // ImageBitmap
  }
}
