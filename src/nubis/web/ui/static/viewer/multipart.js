// multipart/related bodies (RFC 2046 5.1.1, RFC 2387) as WADO-RS sends frames (PS3.18 8.6.1.3),
// parsed from a whole response held in memory. Part bodies are views into the response: a
// caller that keeps one copies it.

const CR = 13;
const LF = 10;
const DASH = 45;
const HEADER_END = new Uint8Array([CR, LF, CR, LF]);
const ascii = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/** The boundary parameter of a multipart Content-Type (quoted or not). */
function boundaryOf(contentType) {
  const match = /;\s*boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))/i.exec(contentType || "");
  if (!match) {
    throw new Error(`response is not multipart/related with a boundary (${contentType || "no Content-Type"})`);
  }
  return match[1] || match[2];
}

function find(bytes, pattern, from) {
  const first = pattern[0];
  const length = pattern.length;
  const last = bytes.length - length;
  for (let at = bytes.indexOf(first, from); at !== -1 && at <= last; at = bytes.indexOf(first, at + 1)) {
    let k = 1;
    while (k < length && bytes[at + k] === pattern[k]) k++;
    if (k === length) return at;
  }
  return -1;
}

function startsAt(bytes, pattern, at) {
  if (at < 0 || at + pattern.length > bytes.length) return false;
  for (let k = 0; k < pattern.length; k++) if (bytes[at + k] !== pattern[k]) return false;
  return true;
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return headers;
}

/**
 * The parts of a multipart body: [{headers, body}], body a Uint8Array view into `buffer`.
 * `partLength`, when known (a native frame's size), lets each body be taken without scanning
 * its bytes for the delimiter; it is checked, and a scan is the fallback.
 */
export function parseMultipart(buffer, contentType, partLength = 0) {
  const bytes = new Uint8Array(buffer);
  const dash = ascii.encode(`--${boundaryOf(contentType)}`);
  const delimiter = new Uint8Array(dash.length + 2);
  delimiter.set([CR, LF]);
  delimiter.set(dash, 2);
  const parts = [];
  let at = 0;
  if (!startsAt(bytes, dash, 0)) {
    const first = find(bytes, delimiter, 0); // after a preamble
    if (first < 0) throw new Error("multipart body without a delimiter");
    at = first + 2;
  }
  for (;;) {
    let next = at + dash.length;
    if (bytes[next] === DASH && bytes[next + 1] === DASH) return parts; // close delimiter
    while (bytes[next] === 32 || bytes[next] === 9) next++; // transport padding
    if (bytes[next] !== CR || bytes[next + 1] !== LF) throw new Error("malformed multipart delimiter");
    const headerStart = next + 2;
    let bodyStart;
    let headers = {};
    if (bytes[headerStart] === CR && bytes[headerStart + 1] === LF) {
      bodyStart = headerStart + 2; // a part without header fields
    } else {
      const headerEnd = find(bytes, HEADER_END, headerStart);
      if (headerEnd < 0) throw new Error("multipart part without the end of its header");
      headers = parseHeaders(latin1.decode(bytes.subarray(headerStart, headerEnd)));
      bodyStart = headerEnd + 4;
    }
    let end = partLength > 0 ? bodyStart + partLength : -1;
    if (!startsAt(bytes, delimiter, end)) end = find(bytes, delimiter, bodyStart);
    if (end < 0) throw new Error("multipart body is cut short");
    parts.push({ headers, body: bytes.subarray(bodyStart, end) });
    at = end + 2;
  }
}
