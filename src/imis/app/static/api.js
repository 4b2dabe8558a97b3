// Talking to the imis server: the token on every call, errors as readable messages, packed arrays.

const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("imis.token", params.get("token"));
  params.delete("token");
  const q = params.toString();
  history.replaceState(null, "", location.pathname + (q ? "?" + q : ""));
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const token = sessionStorage.getItem("imis.token");
  return token ? { ...extra, "X-Imis-Token": token } : extra;
}

async function check(res) {
  if (res.ok) return res;
  let detail = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    /* not JSON: keep the status line */
  }
  throw new ApiError(res.status, detail);
}

async function send(method, url, body, extraHeaders = {}) {
  let res;
  try {
    res = await fetch(url, { method, body, headers: headers(extraHeaders) });
  } catch (err) {
    throw new ApiError(0, "cannot reach the server (connection lost?); your work is kept there: reload to restore it");
  }
  return check(res);
}

export async function getJSON(url) {
  return (await send("GET", url)).json();
}

export async function postJSON(url, data) {
  return (await send("POST", url, JSON.stringify(data), { "Content-Type": "application/json" })).json();
}

export async function postFile(url, file) {
  return (await send("POST", url, file, { "Content-Type": "application/octet-stream" })).json();
}

export async function getBinary(url) {
  const res = await send("GET", url);
  return { buffer: await res.arrayBuffer(), headers: res.headers };
}

export async function download(url) {
  const res = await send("GET", url);
  const cd = res.headers.get("content-disposition") || "";
  const m = /filename="?([^";]+)"?/.exec(cd);
  const blob = await res.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = m ? m[1] : "labels";
  document.body.appendChild(a);
  a.click();
  setTimeout(() => {
    URL.revokeObjectURL(a.href);
    a.remove();
  }, 1000);
  return a.download;
}

// A base64 string of zlib-compressed little-endian uint16 values -> Uint16Array.
export async function unpackU16(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  const buf = await new Response(stream).arrayBuffer();
  return new Uint16Array(buf);
}
