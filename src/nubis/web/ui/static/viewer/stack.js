// A series as a stack of images: each frame of each image instance, in display order, with
// what the pixel pipeline needs. A tiled whole-slide instance (PS3.3 C.8.12.4.1.1, TILED_FULL
// or positions per frame) is one image assembled from its frames.

import { TAG, first, frameGroup, frameNumber, number, text } from "./dataset.js";

const GRAY = new Set(["MONOCHROME1", "MONOCHROME2"]);
const VOI_FUNCTIONS = new Set(["LINEAR", "LINEAR_EXACT", "SIGMOID"]);

/** Pixel layout of frames the browser can window itself; null when the archive renders. */
function grayLayout(ds) {
  const photometric = String(first(ds, TAG.PhotometricInterpretation) || "MONOCHROME2").trim();
  const bitsAllocated = number(ds, TAG.BitsAllocated, 0);
  const bitsStored = number(ds, TAG.BitsStored, bitsAllocated);
  const highBit = number(ds, TAG.HighBit, bitsStored - 1);
  if (
    !GRAY.has(photometric) ||
    number(ds, TAG.SamplesPerPixel, 1) !== 1 ||
    (bitsAllocated !== 8 && bitsAllocated !== 16) ||
    bitsStored < 1 ||
    bitsStored > bitsAllocated ||
    highBit < bitsStored - 1 ||
    highBit >= bitsAllocated ||
    ds[TAG.FloatPixelData] ||
    ds[TAG.DoubleFloatPixelData]
  ) {
    return null;
  }
  return {
    bitsAllocated,
    bitsStored,
    shift: highBit - bitsStored + 1,
    signed: number(ds, TAG.PixelRepresentation, 0) === 1,
    monochrome1: photometric === "MONOCHROME1",
  };
}

/** The stored VOI window of frame `index` (PS3.3 C.11.2), or null when it has none usable. */
function storedWindow(ds, index) {
  const group = frameGroup(ds, index, TAG.FrameVOILUTSequence, TAG.WindowCenter) || ds;
  const center = number(group, TAG.WindowCenter);
  const width = number(group, TAG.WindowWidth);
  const fn = String(first(group, TAG.VOILUTFunction) || "LINEAR").trim().toUpperCase();
  if (center === undefined || width === undefined || !VOI_FUNCTIONS.has(fn)) return null;
  if ((fn === "LINEAR" && width < 1) || width <= 0) return null;
  return { center, width, fn };
}

function modalityRescale(ds, index) {
  const macro = TAG.PixelValueTransformationSequence;
  return {
    slope: frameNumber(ds, index, macro, TAG.RescaleSlope, 1) || 1,
    intercept: frameNumber(ds, index, macro, TAG.RescaleIntercept, 0),
  };
}

/** Tile positions of a whole-slide instance, or null when it is not tiled. */
function tilesOf(ds, rows, columns, frames) {
  const totalColumns = number(ds, TAG.TotalPixelMatrixColumns);
  const totalRows = number(ds, TAG.TotalPixelMatrixRows);
  if (!totalColumns || !totalRows || frames < 2) return null;
  if (totalColumns <= columns && totalRows <= rows) return null;
  const tiles = [];
  const organization = String(first(ds, TAG.DimensionOrganizationType) || "").trim();
  if (organization === "TILED_FULL") {
    // PS3.3 C.7.6.17.3: frames fill the matrix row by row; only the first focal plane and
    // optical path are shown (the frames after one full matrix are the others).
    const across = Math.ceil(totalColumns / columns);
    const down = Math.ceil(totalRows / rows);
    for (let k = 0; k < Math.min(frames, across * down); k++) {
      tiles.push({ frame: k + 1, x: (k % across) * columns, y: Math.floor(k / across) * rows });
    }
  } else {
    const seen = new Set();
    for (let k = 0; k < frames; k++) {
      const group = frameGroup(ds, k, TAG.PlanePositionSlideSequence, TAG.ColumnPositionInTotalImagePixelMatrix);
      if (!group) return null;
      // Positions are 1-based (PS3.3 C.8.12.6.1); a repeated one is another focal plane.
      const x = number(group, TAG.ColumnPositionInTotalImagePixelMatrix) - 1;
      const y = number(group, TAG.RowPositionInTotalImagePixelMatrix) - 1;
      if (!Number.isFinite(x) || !Number.isFinite(y)) return null;
      if (seen.has(`${x},${y}`)) continue;
      seen.add(`${x},${y}`);
      tiles.push({ frame: k + 1, x, y });
    }
  }
  for (const tile of tiles) {
    tile.width = Math.min(columns, totalColumns - tile.x);
    tile.height = Math.min(rows, totalRows - tile.y);
  }
  return { width: totalColumns, height: totalRows, tiles: tiles.filter((t) => t.width > 0 && t.height > 0) };
}

function frameRate(ds) {
  const frameTime = number(ds, TAG.FrameTime);
  if (frameTime > 0) return Math.min(60, Math.max(1, Math.round(1000 / frameTime)));
  const rate = number(ds, TAG.RecommendedDisplayFrameRate) || number(ds, TAG.CineRate);
  return rate > 0 ? Math.min(60, Math.max(1, Math.round(rate))) : 0;
}

function instanceOrder(a, b) {
  const na = number(a, TAG.InstanceNumber, Number.MAX_SAFE_INTEGER);
  const nb = number(b, TAG.InstanceNumber, Number.MAX_SAFE_INTEGER);
  if (na !== nb) return na - nb;
  const sa = String(first(a, TAG.SOPInstanceUID));
  const sb = String(first(b, TAG.SOPInstanceUID));
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}

/**
 * The stack of a series from its metadata (an array of DICOM JSON data sets). Instances
 * without pixels (reports, presentation states) are left out.
 */
export function buildStack(series, metadata) {
  const instances = metadata.filter((ds) => number(ds, TAG.Rows) > 0 && number(ds, TAG.Columns) > 0);
  instances.sort(instanceOrder);
  const images = [];
  let fps = 0;
  for (const ds of instances) {
    const sop = String(first(ds, TAG.SOPInstanceUID));
    const rows = number(ds, TAG.Rows);
    const columns = number(ds, TAG.Columns);
    const frames = Math.max(1, Math.trunc(number(ds, TAG.NumberOfFrames, 1)));
    const gray = grayLayout(ds);
    const frameBytes = gray ? rows * columns * (gray.bitsAllocated / 8) : 0;
    const base = { series, sop, instance: ds, frames, gray, frameBytes, tileWidth: columns, tileHeight: rows };
    if (frames > 1) fps = fps || frameRate(ds);
    const tiled = tilesOf(ds, rows, columns, frames);
    if (tiled) {
      images.push({
        ...base,
        key: `${sop}/tiled`,
        frame: tiled.tiles[0] ? tiled.tiles[0].frame : 1,
        width: tiled.width,
        height: tiled.height,
        tiles: tiled.tiles,
        window: gray ? storedWindow(ds, 0) : null,
        rescale: gray ? modalityRescale(ds, 0) : null,
      });
      continue;
    }
    for (let frame = 1; frame <= frames; frame++) {
      images.push({
        ...base,
        key: `${sop}/${frame}`,
        frame,
        width: columns,
        height: rows,
        tiles: null,
        window: gray ? storedWindow(ds, frame - 1) : null,
        rescale: gray ? modalityRescale(ds, frame - 1) : null,
      });
    }
  }
  const head = instances[0];
  return {
    series,
    images,
    fps,
    modality: text(head, TAG.Modality),
  };
}

/** The frames an image is made of: one, or every tile of a whole-slide image. */
export function framesOf(image) {
  return image.tiles ? image.tiles.map((tile) => tile.frame) : [image.frame];
}

/** The bytes an image holds once loaded (the cache's measure). */
export function imageBytes(image) {
  const pixels = image.tiles
    ? image.tiles.reduce((sum, tile) => sum + tile.width * tile.height, 0)
    : image.width * image.height;
  return pixels * (image.gray ? image.gray.bitsAllocated / 8 : 4);
}
