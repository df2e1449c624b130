// The management API, called exactly as the CLI calls it; the session cookie authenticates and
// the CSRF token goes in a header on every request that changes something.

let csrf = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function setCsrf(token) {
  csrf = token;
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const text = await response.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = { detail: text };
  }
  if (!response.ok) {
    if (response.status === 401 && path !== "/console/session") {
      window.dispatchEvent(new CustomEvent("ts-signed-out"));
    }
    throw new ApiError(response.status, doc || {});
  }
  // A paged list: follow its `next` link (RFC 8288) and return the whole list.
  const next = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get("Link") || "");
  if (method === "GET" && Array.isArray(doc) && next && next[1] !== path) {
    return doc.concat(await api("GET", next[1]));
  }
  return doc;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const put = (path, body) => api("PUT", path, body);
export const del = (path) => api("DELETE", path);
export const enc = encodeURIComponent;
