// DICOMweb reads of the viewer: GET only, with the browser session's cookie (same origin), so
// the archive authorizes, scopes and audits each of them like any other client's.

import { parseMultipart } from "./multipart.js";

const NATIVE_FRAMES =
  'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';

/** A failed request, with the archive's reason when it gave one. */
export class RequestFailed extends Error {
  constructor(status, reason) {
    super(reason || `the archive answered ${status}`);
    this.status = status;
  }
}

async function failure(response) {
  let reason = "";
  try {
    const body = await response.json();
    reason = typeof body.reason === "string" ? body.reason : "";
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  if (response.status === 401) reason = "the session has ended: reload the page to sign in again";
  return new RequestFailed(response.status, reason);
}

export class DicomWeb {
  constructor(base, study) {
    this.base = base.replace(/\/$/, "");
    this.study = study;
  }

  seriesUrl(series) {
    return `${this.base}/studies/${this.study}/series/${series}`;
  }

  instanceUrl(series, sop) {
    return `${this.seriesUrl(series)}/instances/${sop}`;
  }

  async get(url, accept, signal) {
    const response = await fetch(url, {
      headers: { Accept: accept },
      // As the page's preload of the first metadata asks, so that the browser can reuse it.
      credentials: "include",
      signal,
    });
    if (!response.ok) throw await failure(response);
    return response;
  }

  /** The DICOM JSON of every instance of a series: one request (PS3.18 10.4.1.1.2). */
  async seriesMetadata(series) {
    const response = await this.get(`${this.seriesUrl(series)}/metadata`, "application/dicom+json");
    return response.json();
  }

  /**
   * Frames of one instance decoded to native little endian pixels (PS3.18 10.4.1.1.4,
   * 8.7.3.5.2): one Uint8Array per frame number, in the order asked.
   */
  async nativeFrames(series, sop, numbers, frameBytes, signal) {
    const url = `${this.instanceUrl(series, sop)}/frames/${numbers.join(",")}`;
    const response = await this.get(url, NATIVE_FRAMES, signal);
    const parts = parseMultipart(
      await response.arrayBuffer(),
      response.headers.get("Content-Type"),
      frameBytes,
    );
    if (parts.length !== numbers.length) {
      throw new Error(`asked for ${numbers.length} frame(s), received ${parts.length}`);
    }
    return parts.map((part) => part.body);
  }

  /** One frame rendered by the archive (PS3.18 10.4.1.1.3), lossless, as an ImageBitmap. */
  async renderedFrame(series, sop, number, signal) {
    const url = `${this.instanceUrl(series, sop)}/frames/${number}/rendered`;
    const response = await this.get(url, "image/png", signal);
    return createImageBitmap(await response.blob());
  }
}
