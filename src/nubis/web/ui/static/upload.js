// Upload from the browser (/ui/upload): each DICOM file is POSTed to /dicom-web/studies as a
// STOW-RS request of one part, with the session cookie and the session's CSRF token; a few
// at once. DICOMDIR and files that are not PS3.10 ("DICM" after the 128-byte preamble) are
// skipped and listed as such. Every text shown is set with textContent, never as markup.

const IN_FLIGHT = 3;
const STOW_URL = "/dicom-web/studies";

const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const dropzone = document.getElementById("dropzone");
const pickFiles = document.getElementById("pick-files");
const pickFolder = document.getElementById("pick-folder");
const statusBox = document.getElementById("upload-status");
const progress = document.getElementById("upload-progress");
const summary = document.getElementById("upload-summary");
const results = document.getElementById("upload-results");
const rows = document.getElementById("upload-rows");

const queue = [];
const counts = { stored: 0, failed: 0, skipped: 0 };
let running = 0;
let scanning = 0; // batches of files still being looked at (folders walked, headers read)
let totalBytes = 0;
let doneBytes = 0;
const inFlightBytes = new Map();

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let amount = bytes / 1024;
  let unit = 0;
  while (amount >= 1024 && unit < units.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  return `${amount < 100 ? amount.toPrecision(3) : Math.round(amount)} ${units[unit]}`;
}

function addRow(path, size) {
  const row = document.createElement("tr");
  const name = document.createElement("td");
  name.className = "wrap mono";
  name.textContent = path;
  const bytes = document.createElement("td");
  bytes.className = "num";
  bytes.textContent = formatSize(size);
  const result = document.createElement("td");
  result.className = "wrap";
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = "waiting";
  result.append(badge);
  row.append(name, bytes, result);
  rows.append(row);
  results.hidden = false;
  return { row, badge, detail: result };
}

function setResult(entry, kind, label, detail) {
  entry.badge.className = `badge ${kind}`;
  entry.badge.textContent = label;
  entry.row.dataset.result = label;
  if (detail) {
    const text = document.createElement("span");
    text.className = "muted result-detail";
    text.textContent = ` ${detail}`;
    entry.detail.append(text);
  }
}

function updateSummary() {
  statusBox.hidden = false;
  const loaded = doneBytes + [...inFlightBytes.values()].reduce((a, b) => a + b, 0);
  progress.max = Math.max(totalBytes, 1);
  progress.value = Math.min(loaded, progress.max);
  const pending = queue.length + running;
  const parts = [`${counts.stored} stored`, `${counts.failed} failed`, `${counts.skipped} skipped`];
  if (pending) summary.textContent = `Uploading… ${pending} file(s) to go; ${parts.join(", ")}.`;
  else if (scanning) summary.textContent = `Reading the files… ${parts.join(", ")}.`;
  else summary.textContent = `Done: ${parts.join(", ")}.`;
  dropzone.dataset.state = pending || scanning ? "busy" : "idle";
}

const MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"; // Media Storage Directory Storage: a DICOMDIR
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);

// What a file is, from its first bytes: "dicom" (PS3.10: "DICM" after the 128-byte preamble),
// "dicomdir" (its file meta says Media Storage Directory, whatever the file's name) or "other".
async function kindOf(file) {
  if (file.size < 132) return "other";
  const head = new Uint8Array(await file.slice(0, 8192).arrayBuffer());
  const magic = String.fromCharCode(...head.subarray(128, 132));
  if (magic !== "DICM") return "other";
  // The file meta group (0002) is always Explicit VR Little Endian (PS3.10 7.1).
  const view = new DataView(head.buffer);
  let at = 132;
  while (at + 8 <= head.length && view.getUint16(at, true) === 0x0002) {
    const element = view.getUint16(at + 2, true);
    const vr = String.fromCharCode(head[at + 4], head[at + 5]);
    let length = view.getUint16(at + 6, true);
    let value = at + 8;
    if (LONG_VRS.has(vr)) {
      if (at + 12 > head.length) break;
      length = view.getUint32(at + 8, true);
      value = at + 12;
    }
    if (element === 0x0002 && value + length <= head.length) {
      const uid = String.fromCharCode(...head.subarray(value, value + length)).replace(/[\0 ]+$/, "");
      return uid === MEDIA_DIRECTORY ? "dicomdir" : "dicom";
    }
    at = value + length;
  }
  return "dicom";
}

function baseName(path) {
  return path.split("/").pop() ?? path;
}

async function enqueue(file, path) {
  const entry = addRow(path, file.size);
  let kind = "other";
  try {
    kind = baseName(path).toUpperCase() === "DICOMDIR" ? "dicomdir" : await kindOf(file);
  } catch {
    counts.failed += 1;
    setResult(entry, "bad", "failed", "the file could not be read");
    updateSummary();
    return;
  }
  if (kind !== "dicom") {
    counts.skipped += 1;
    const why =
      kind === "dicomdir"
        ? "a DICOMDIR: the media's index, not an image"
        : "not a DICOM file (no DICM preamble)";
    setResult(entry, "", "skipped", why);
    updateSummary();
    return;
  }
  totalBytes += file.size;
  queue.push({ file, entry });
  updateSummary();
  pump();
}

function pump() {
  while (running < IN_FLIGHT && queue.length) {
    const job = queue.shift();
    running += 1;
    send(job).finally(() => {
      running -= 1;
      updateSummary();
      pump();
    });
  }
}

function warningReason(xhr) {
  // STOW-RS sends every refusal and warning reason in a Warning header:
  // 299 nubis "<uid>: <reason>".
  const header = xhr.getResponseHeader("warning") ?? "";
  const match = header.match(/"(.*)"/);
  return match ? match[1] : "";
}

function failureReason(xhr) {
  const warning = warningReason(xhr);
  if (warning) return warning;
  try {
    const body = JSON.parse(xhr.responseText);
    if (body && typeof body.reason === "string") return body.reason;
  } catch {
    // not JSON: the status says it
  }
  return `HTTP ${xhr.status}`;
}

function send({ file, entry }) {
  return new Promise((resolve) => {
    const boundary = `nubis-${crypto.randomUUID()}`;
    const body = new Blob([
      `--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`,
      file,
      `\r\n--${boundary}--\r\n`,
    ]);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", STOW_URL);
    xhr.setRequestHeader(
      "Content-Type",
      `multipart/related; type="application/dicom"; boundary=${boundary}`,
    );
    xhr.setRequestHeader("Accept", "application/dicom+json");
    xhr.setRequestHeader("X-CSRF-Token", csrfToken);
    setResult(entry, "", "uploading");
    xhr.upload.addEventListener("progress", (event) => {
      inFlightBytes.set(entry, Math.min(event.loaded, file.size));
      updateSummary();
    });
    const finish = (kind, label, detail) => {
      inFlightBytes.delete(entry);
      doneBytes += file.size;
      counts[label === "stored" ? "stored" : "failed"] += 1;
      setResult(entry, kind, label, detail);
      resolve();
    };
    xhr.addEventListener("load", () => {
      if (xhr.status === 200) finish("ok", "stored", "");
      // One object per request: 202 is that object stored with a warning (PS3.18 10.5.3),
      // e.g. the same instance already stored in another encoding; the header says what.
      else if (xhr.status === 202) finish("ok", "stored", warningReason(xhr));
      else finish("bad", "failed", failureReason(xhr));
    });
    xhr.addEventListener("error", () => finish("bad", "failed", "the connection failed"));
    xhr.addEventListener("abort", () => finish("bad", "failed", "cancelled"));
    xhr.send(body);
  });
}

// ---- folders: a dropped directory is walked; picked folders come as files with a path

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

function fileOf(entry) {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

async function walk(entry) {
  if (entry.isFile) {
    const file = await fileOf(entry);
    await enqueue(file, entry.fullPath.replace(/^\//, ""));
    return;
  }
  if (!entry.isDirectory) return;
  const reader = entry.createReader();
  for (;;) {
    // readEntries hands out a directory's entries a batch at a time, until an empty one.
    const batch = await readEntries(reader);
    if (!batch.length) return;
    for (const child of batch) await walk(child);
  }
}

async function scan(work) {
  scanning += 1;
  updateSummary();
  try {
    await work();
  } finally {
    scanning -= 1;
    updateSummary();
  }
}

async function takeFiles(list) {
  for (const file of Array.from(list)) {
    await enqueue(file, file.webkitRelativePath || file.name);
  }
}

dropzone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropzone.classList.add("over");
});
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
dropzone.addEventListener("drop", async (event) => {
  event.preventDefault();
  dropzone.classList.remove("over");
  // The drop's items are readable only now, before the first await.
  const items = Array.from(event.dataTransfer?.items ?? []);
  const entries = items.map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  const files = Array.from(event.dataTransfer?.files ?? []);
  await scan(async () => {
    if (entries.length) {
      for (const entry of entries) await walk(entry);
    } else {
      await takeFiles(files);
    }
  });
});

for (const input of [pickFiles, pickFolder]) {
  input.addEventListener("change", async () => {
    const files = Array.from(input.files ?? []);
    input.value = ""; // the same files may be picked again
    await scan(() => takeFiles(files));
  });
}
