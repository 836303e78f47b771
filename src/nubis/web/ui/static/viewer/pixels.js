// The grayscale display pipeline in the browser (PS3.4 Annex N.2): stored values (Bits Stored,
// High Bit, Pixel Representation) -> Modality LUT (Rescale Slope/Intercept) -> VOI (window,
// PS3.3 C.11.2.1.2) -> MONOCHROME1 inversion -> 8-bit gray. Each frame is kept as indices
// into a table of all its possible stored values, so a new window is one table of at most
// 65,536 entries and a pass over the pixels: dragging the window needs no request.

/**
 * A native little endian frame as table indices: index = stored value - offset, where offset
 * is -2^(BitsStored-1) for signed pixels (two's complement in Bits Stored bits) and 0 for
 * unsigned. Bits outside Bits Stored (overlays in old objects) are dropped.
 */
export function decodeGray(bytes, layout, count) {
  const { bitsAllocated, bitsStored, shift, signed } = layout;
  const needed = count * (bitsAllocated / 8);
  if (bytes.length < needed) throw new Error(`a frame has ${bytes.length} bytes, ${needed} expected`);
  let source;
  if (bitsAllocated === 8) {
    source = bytes.subarray(0, count);
  } else if (bytes.byteOffset % 2 === 0) {
    source = new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  } else {
    source = new Uint16Array(bytes.slice(0, needed).buffer); // odd offset in the response
  }
  const indices = bitsStored <= 8 ? new Uint8Array(count) : new Uint16Array(count);
  const mask = bitsStored >= 16 ? 0xffff : (1 << bitsStored) - 1;
  const sign = signed ? 1 << (bitsStored - 1) : 0;
  let low = mask;
  let high = 0;
  for (let i = 0; i < count; i++) {
    // XOR with the sign bit maps -2^(n-1)..2^(n-1)-1 onto 0..2^n-1, keeping the order.
    const index = ((source[i] >> shift) & mask) ^ sign;
    indices[i] = index;
    if (index < low) low = index;
    if (index > high) high = index;
  }
  return { indices, low, high, offset: -sign };
}

/** Modality values (after rescale) of table index `index` of a frame. */
function modalityValue(index, pixels, rescale) {
  return (index + pixels.offset) * rescale.slope + rescale.intercept;
}

/** The value range of a frame after the Modality LUT: the window shown when none is stored. */
export function valueRange(pixels, rescale) {
  const a = modalityValue(pixels.low, pixels, rescale);
  const b = modalityValue(pixels.high, pixels, rescale);
  return { low: Math.min(a, b), high: Math.max(a, b) };
}

/** The window that shows a whole value range: LINEAR_EXACT maps low..high onto 0..255. */
export function fullRangeWindow(range) {
  return {
    center: (range.low + range.high) / 2,
    width: Math.max(range.high - range.low, 1),
    fn: "LINEAR_EXACT",
  };
}

/** One value through a VOI window (PS3.3 C.11.2.1.2.1, .3.1, .3.2), 0..255 unrounded. */
function windowed(x, center, width, fn) {
  if (fn === "SIGMOID") return 255 / (1 + Math.exp((-4 * (x - center)) / width));
  if (fn === "LINEAR_EXACT") {
    if (x <= center - width / 2) return 0;
    if (x > center + width / 2) return 255;
    return ((x - center) / width + 0.5) * 255;
  }
  if (x <= center - 0.5 - (width - 1) / 2) return 0;
  if (x > center - 0.5 + (width - 1) / 2) return 255;
  return ((x - (center - 0.5)) / (width - 1) + 0.5) * 255;
}

/**
 * The table from index to an opaque RGBA pixel (as a little endian Uint32) for a frame
 * layout, its rescale, a window, and whether to show it inverted.
 */
export function grayTable(layout, offset, rescale, window, invert) {
  const size = 1 << layout.bitsStored;
  const table = new Uint32Array(size);
  const { slope, intercept } = rescale;
  const { center, width, fn } = window;
  for (let i = 0; i < size; i++) {
    let gray = Math.round(windowed((i + offset) * slope + intercept, center, width, fn));
    if (invert) gray = 255 - gray;
    table[i] = 0xff000000 | (gray << 16) | (gray << 8) | gray;
  }
  return table;
}

/** Paint a frame's indices through `table` into RGBA pixels (an ImageData's buffer). */
export function paint(indices, table, rgba) {
  const out = new Uint32Array(rgba.buffer, rgba.byteOffset, indices.length);
  for (let i = 0; i < indices.length; i++) out[i] = table[indices[i]];
}
