// Calls to the gateway's JSON API, with the admin token kept in this tab's sessionStorage.
// Paths are the API's own ("api/server/fleet"), resolved against the site this page came
// from, so the dashboard also works behind a proxy that serves the gateway under a prefix.

const TOKEN_KEY = "llm-gateway.admin-token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  get auth() {
    return this.status === 401 || this.status === 403;
  }
}

// The message of an error answer, whatever the route family's shape.
function messageOf(doc) {
  if (doc === null || typeof doc !== "object") return null;
  if (typeof doc.msg === "string") return doc.msg;
  if (typeof doc.error === "string") return doc.error;
  if (doc.error && typeof doc.error.message === "string") return doc.error.message;
  return null;
}

// Send a request; `bearer` is the credential to send: the admin token by default, another
// one (an API key), or null for none. Resolves to the answer's JSON; throws ApiError.
export async function call(method, path, body, { bearer = token.get() } = {}) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(`../${path}`, document.baseURI), init);
  } catch (err) {
    throw new ApiError(0, `the gateway cannot be reached (${err.message})`);
  }
  let doc = null;
  try {
    doc = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  if (!response.ok) {
    throw new ApiError(response.status, messageOf(doc) ?? `HTTP ${response.status}`);
  }
  return doc;
}

export const get = (path) => call("GET", path);
export const post = (path, body, options) => call("POST", path, body, options);
export const del = (path) => call("DELETE", path);
