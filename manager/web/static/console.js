// The admin console's own script: no framework, no build. Pages are rendered by the server; this adds the
// search bar's suggestions, the keyboard, and the actions, which all go through the JSON API (/api/v1) with the
// session's CSRF token, so each action has one implementation: the API's.
"use strict";

const Console = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // Call the API as the logged-in browser session. Resolves to the parsed JSON (or null for 204); rejects with
  // an Error whose message is the API's `detail` (what to fix), never a stack trace.
  async function api(method, path, body) {
    const init = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    const response = await fetch("/api/v1" + path, init);
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const error = new Error((data && data.detail) || `${response.status} ${response.statusText}`);
      error.status = response.status; error.body = data;
      throw error;
    }
    return data;
  }

  // A short message in the page's live region (created on first use), so screen readers hear it too.
  function notify(text, kind = "info") {
    let region = document.getElementById("notices");
    if (!region) {
      region = document.createElement("div");
      region.id = "notices"; region.className = "notices"; region.setAttribute("role", "status");
      region.setAttribute("aria-live", "polite");
      document.body.appendChild(region);
    }
    const item = document.createElement("p");
    item.className = `notice ${kind}`; item.textContent = text;
    region.appendChild(item);
    setTimeout(() => item.remove(), 8000);
  }

  // Offer a connection file the API returned ({name, media_type, content}) as a download: a link to a Blob put in
  // `place` (so it can be clicked again) and clicked once. Returns the link.
  function offerFile(place, file) {
    const old = place.querySelector("a[download]");
    if (old) URL.revokeObjectURL(old.href);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([file.content], { type: file.media_type }));
    link.download = file.name;
    link.textContent = `Download ${file.name}`;
    place.replaceChildren(link);
    link.click();
    return link;
  }

  // ---- the search bar: a combobox whose suggestions come from GET /api/v1/search/complete --------------------
  function initSearch() {
    const input = document.getElementById("search");
    const list = document.getElementById("search-suggestions");
    if (!input || !list) return;
    let items = [], active = -1, start = 0, seq = 0, timer = null;

    function close() {
      list.hidden = true; list.innerHTML = ""; items = []; active = -1;
      input.setAttribute("aria-expanded", "false"); input.removeAttribute("aria-activedescendant");
    }
    function highlight(index) {
      active = index;
      [...list.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
      if (index >= 0) {
        input.setAttribute("aria-activedescendant", list.children[index].id);
        list.children[index].scrollIntoView({ block: "nearest" });
      } else input.removeAttribute("aria-activedescendant");
    }
    function render(suggestions) {
      list.innerHTML = "";
      items = suggestions.slice(0, 50);
      items.forEach((text, i) => {
        const li = document.createElement("li");
        li.id = `suggestion-${i}`; li.setAttribute("role", "option"); li.setAttribute("aria-selected", "false");
        li.textContent = text;
        li.addEventListener("mousedown", (event) => { event.preventDefault(); pick(i); });
        list.appendChild(li);
      });
      const open = items.length > 0;
      list.hidden = !open; input.setAttribute("aria-expanded", String(open)); active = -1;
    }
    function pick(index) {
      const caret = input.selectionStart ?? input.value.length;
      const before = input.value.slice(0, start), after = input.value.slice(caret);
      const word = items[index];
      // An object name is followed by its plural s or ':' (Vm -> Vms:), a '.' or ':' by the next word at once.
      const objectName = !before.includes(":");
      const glue = objectName || word.endsWith(":") || word.endsWith(".") ? "" : " ";
      input.value = before + word + glue + after.trimStart();
      const at = (before + word + glue).length;
      input.setSelectionRange(at, at);
      close();
      suggest();
    }
    async function suggest() {
      const caret = input.selectionStart ?? input.value.length;
      const typed = input.value.slice(0, caret);
      const mine = ++seq;
      try {
        const answer = await api("GET", "/search/complete?q=" + encodeURIComponent(typed));
        if (mine !== seq) return;  // a newer keystroke already asked
        start = answer.start;
        render(answer.suggestions.filter((s) => s !== answer.partial || answer.suggestions.length > 1));
      } catch (_) { close(); }
    }
    input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(suggest, 80); });
    input.addEventListener("focus", () => { if (!input.value) suggest(); });
    input.addEventListener("blur", () => setTimeout(close, 100));
    input.addEventListener("keydown", (event) => {
      const open = !list.hidden && items.length;
      if (event.key === "ArrowDown") {
        event.preventDefault();
        if (!open) { suggest(); return; }
        highlight((active + 1) % items.length);
      } else if (event.key === "ArrowUp" && open) {
        event.preventDefault(); highlight(active <= 0 ? items.length - 1 : active - 1);
      } else if (event.key === "Enter" && open && active >= 0) {
        event.preventDefault(); pick(active);
      } else if (event.key === "Tab" && open && active >= 0) {
        event.preventDefault(); pick(active);
      } else if (event.key === "Escape" && open) {
        event.preventDefault(); close();
      }
    });
    // "/" anywhere outside a text field brings the search bar back, as in oVirt and most consoles.
    document.addEventListener("keydown", (event) => {
      const target = event.target;
      const typing = target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
      if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
        event.preventDefault(); input.focus(); input.select();
      }
    });
  }

  // ---- bookmarks ------------------------------------------------------------------------------------------------
  function initBookmarks() {
    const form = document.getElementById("save-bookmark");
    if (form) form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = form.querySelector("input[name=name]").value.trim();
      try {
        await api("POST", "/bookmarks", { name, query: form.dataset.query });
        location.reload();
      } catch (error) { notify(`Could not save the bookmark: ${error.message}`, "error"); }
    });
    document.querySelectorAll("[data-delete-bookmark]").forEach((button) => button.addEventListener("click", async () => {
      try {
        await api("DELETE", "/bookmarks/" + button.dataset.deleteBookmark);
        button.closest("li").remove();
      } catch (error) { notify(`Could not delete the bookmark: ${error.message}`, "error"); }
    }));
  }

  const inits = [initSearch, initBookmarks];
  document.addEventListener("DOMContentLoaded", () => inits.forEach((init) => init()));
  return { api, notify, csrf, offerFile, onReady: (fn) => inits.push(fn) };
})();
