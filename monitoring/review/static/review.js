"use strict";
// The review page: lists feedback items, decides them (buttons or keys), filters, shows what is waiting.
// Every user-supplied text goes in with textContent (never innerHTML); decisions carry the session's CSRF token.

const state = { csrf: null, items: [], current: 0 };
const $ = (id) => document.getElementById(id);

function flash(text, bad = false) {
  const el = $("flash");
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

function promptText(prompt) {
  if (typeof prompt === "string") return prompt;
  if (Array.isArray(prompt)) {
    return prompt.map((m) => (m && typeof m === "object" ? `${m.role}: ${typeof m.content === "string"
      ? m.content : JSON.stringify(m.content)}` : String(m))).join("\n\n");
  }
  return JSON.stringify(prompt);
}

function when(ts) {
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) { location.reload(); }
  if (!response.ok) {
    const err = body && body.error ? body.error : { message: response.statusText };
    throw new Error(err.message + (err.fix ? ` (${err.fix})` : ""));
  }
  return body;
}

function query() {
  const params = new URLSearchParams();
  for (const [name, id] of [["status", "f-status"], ["model_version", "f-version"], ["rating", "f-rating"],
    ["since", "f-since"]]) {
    if ($(id).value) params.set(name, $(id).value);
  }
  if ($("f-until").value) {  // the "To" day is included: the window ends at the next midnight (UTC)
    const next = new Date($("f-until").value + "T00:00:00Z");
    next.setUTCDate(next.getUTCDate() + 1);
    params.set("until", next.toISOString().slice(0, 10));
  }
  return params.toString();
}

function fillVersions(versions) {
  const select = $("f-version");
  const chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const v of versions) {
    const opt = document.createElement("option");
    opt.value = v;
    opt.textContent = v === "-" ? "(none)" : v;
    select.appendChild(opt);
  }
  select.value = versions.includes(chosen) ? chosen : "";
}

function renderItem(item, index) {
  const node = $("item-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = String(item.id);
  node.dataset.index = String(index);
  const set = (cls, text) => { node.querySelector(cls).textContent = text; };
  set(".fid", `#${item.id}`);
  set(".status", item.status + (item.edited ? " (edited)" : ""));
  set(".rating", `rating ${item.rating === null ? "none" : item.rating}`);
  set(".version", `${item.model} ${item.model_version || "(no version)"}`);
  set(".when", when(item.time));
  set(".rid", item.request_id);
  set(".prompt", promptText(item.prompt));
  set(".response", item.response);
  const correction = item.status === "pending" ? item.correction : item.reviewed_correction;
  node.querySelector(".correction-box").hidden = correction === null;
  set(".correction", correction === null ? "" : correction);
  node.querySelector(".comment-box").hidden = !item.comment;
  set(".comment", item.comment || "");
  if (item.reviewer) set(".decided", `${item.status} by ${item.reviewer} at ${when(item.reviewed_at)}`);
  node.querySelector(".accept").addEventListener("click", () => decide(index, "accept"));
  node.querySelector(".reject").addEventListener("click", () => decide(index, "reject"));
  node.querySelector(".edit").addEventListener("click", () => openEditor(index));
  node.querySelector(".cancel").addEventListener("click", () => closeEditor(index));
  node.querySelector(".editor").addEventListener("submit", (ev) => { ev.preventDefault(); saveEdit(index); });
  node.addEventListener("click", () => select(index));
  return node;
}

function render() {
  const main = $("items");
  main.replaceChildren(...state.items.map(renderItem));
  if (!state.items.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Nothing matches: the queue is clear for these filters.";
    main.appendChild(empty);
  }
  select(Math.min(state.current, Math.max(state.items.length - 1, 0)));
}

function select(index) {
  state.current = index;
  document.querySelectorAll(".item").forEach((el) => el.classList.toggle("current", Number(el.dataset.index) === index));
  const el = document.querySelector(`.item[data-index="${index}"]`);
  if (el && !el.contains(document.activeElement)) { el.focus({ preventScroll: true }); el.scrollIntoView({ block: "nearest" }); }
}

async function load() {
  try {
    const data = await api(`/api/items?${query()}`);
    state.items = data.items;
    $("waiting").textContent = String(data.counts.pending);
    $("matching").textContent = String(data.matching);
    fillVersions(data.model_versions);
    render();
  } catch (err) {
    flash(`could not load the queue: ${err.message}`, true);
  }
}

async function decide(index, action, body = {}) {
  const item = state.items[index];
  if (!item) return;
  try {
    await api(`/api/items/${item.id}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
      body: JSON.stringify({ ...body, expect: [item.status] }),
    });
    flash(`#${item.id} ${action === "edit" ? "edited and accepted" : action + "ed"}`);
    await load();
  } catch (err) {
    flash(`#${item.id}: ${err.message}`, true);
  }
}

function editorOf(index) { return document.querySelector(`.item[data-index="${index}"] .editor`); }

function openEditor(index) {
  const item = state.items[index];
  const editor = editorOf(index);
  if (!item || !editor) return;
  select(index);
  const current = item.status === "pending" ? item.correction : item.reviewed_correction;
  editor.querySelector(".edit-text").value = current !== null ? current : item.response;
  editor.hidden = false;
  editor.querySelector(".edit-text").focus();
}

function closeEditor(index) {
  const editor = editorOf(index);
  if (editor) editor.hidden = true;
  select(index);
}

function saveEdit(index) {
  const editor = editorOf(index);
  const rating = editor.querySelector(".edit-rating").value;
  const body = { correction: editor.querySelector(".edit-text").value };
  if (rating !== "") body.rating = Number(rating);
  decide(index, "edit", body);
}

function onKey(ev) {
  const tag = ev.target.tagName;
  if (tag === "TEXTAREA") {
    const index = Number(ev.target.closest(".item").dataset.index);
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEdit(index); }
    if (ev.key === "Escape") { ev.preventDefault(); closeEditor(index); }
    return;
  }
  if (tag === "INPUT" || tag === "SELECT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const keys = {
    j: () => select(Math.min(state.current + 1, state.items.length - 1)),
    ArrowDown: () => select(Math.min(state.current + 1, state.items.length - 1)),
    k: () => select(Math.max(state.current - 1, 0)),
    ArrowUp: () => select(Math.max(state.current - 1, 0)),
    a: () => decide(state.current, "accept"),
    r: () => decide(state.current, "reject"),
    e: () => openEditor(state.current),
  };
  if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
}

async function signOut() {
  await api("/logout", { method: "POST", headers: { "X-CSRF-Token": state.csrf } });
  location.reload();
}

async function main() {
  const session = await api("/api/session");
  state.csrf = session.csrf;
  $("reviewer").textContent = session.reviewer;
  $("filters").addEventListener("change", () => { state.current = 0; load(); });
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("sign-out").addEventListener("click", signOut);
  document.addEventListener("keydown", onKey);
  await load();
  document.body.dataset.ready = "1";
}

main().catch((err) => flash(`could not start: ${err.message}`, true));
