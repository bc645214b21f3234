// The dashboard (templates/admin/dashboard.html) refreshes its figures from GET /api/v1/dashboard every few seconds,
// in place: no reload. The page marks each figure with the path of its value in the API's answer:
//   data-f="hosts.total" data-fmt="int|pct|mib|when|state|enum|text"   the element's text
//   data-bar="path" [data-of="path"]                                     a bar's length (percent, or path / of)
//   data-show="path"  data-zero="path"  data-flag="path"                 hidden unless / class "zero" / "flagged"
//   data-list="path" with a <template> row                              one row per item; paths inside are the item's
//   data-events="path"                                                   events, drawn by Console.renderEvent
"use strict";

(() => {
  const PERIOD_MS = 5000;
  const get = (data, path) => path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), data);

  // As the server's size_bytes filter writes sizes: "512 B", "1.5 GiB", "416.5 TiB".
  function sizeBytes(value) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(value) >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return i === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[i]}`;
  }

  function format(value, fmt) {
    if (value == null) return "—";
    switch (fmt) {
      case "int": return Number(value).toLocaleString("en-US");
      case "pct": return `${value} %`;
      case "mib": return sizeBytes(value * 1048576);
      case "when": return Console.when ? Console.when(value) : String(value);
      case "state": case "enum": return String(value).replaceAll("_", " ");
      default: return String(value);
    }
  }

  // Fill the figures under `root` from `data`, leaving alone those inside a list (their paths are an item's).
  function fill(root, data, isRow = false) {
    const mine = (node) => isRow || !node.closest("[data-list]");
    const each = (selector, fn) => root.querySelectorAll(selector).forEach((node) => { if (mine(node)) fn(node); });
    each("[data-f]", (node) => {
      const value = get(data, node.dataset.f);
      node.textContent = format(value, node.dataset.fmt);
      if (node.hasAttribute("data-state")) node.className = `state s-${value}`;
    });
    each("[data-bar]", (node) => {
      let value = Number(get(data, node.dataset.bar)) || 0;
      if (node.dataset.of) { const whole = Number(get(data, node.dataset.of)) || 0; value = whole ? Math.round(100 * value / whole) : 0; }
      node.style.setProperty("--v", `${Math.min(100, Math.max(0, value))}%`);
    });
    each("[data-show]", (node) => { node.hidden = !get(data, node.dataset.show); });
    each("[data-zero]", (node) => node.classList.toggle("zero", !get(data, node.dataset.zero)));
    each("[data-href]", (node) => node.setAttribute("href", node.dataset.href.replace("{id}", encodeURIComponent(data.id))));
    if (isRow && root.dataset.flag) root.classList.toggle("flagged", Boolean(get(data, root.dataset.flag)));
  }

  function fillLists(data) {
    document.querySelectorAll("[data-list]").forEach((body) => {
      const template = body.querySelector("template");
      const rows = (get(data, body.dataset.list) || []).map((item) => {
        const row = template.content.firstElementChild.cloneNode(true);
        row.dataset.key = item.id;
        fill(row, item, true);
        return row;
      });
      body.replaceChildren(template, ...rows);
    });
    document.querySelectorAll("[data-events]").forEach((list) => {
      const items = get(data, list.dataset.events) || [];
      list.replaceChildren(...items.map(Console.renderEvent));
      const empty = document.querySelector(`[data-empty="${list.dataset.events}"]`);
      if (empty) empty.hidden = items.length > 0;
    });
  }

  function init() {
    const status = document.getElementById("dash-status");
    if (!status) return;
    let failing = false;
    async function refresh() {
      if (!document.hidden) {
        try {
          const data = await Console.api("GET", "/dashboard");
          fill(document, data);
          fillLists(data);
          if (failing) status.textContent = "they refresh every few seconds.";
          failing = false;
        } catch (error) {
          failing = true;
          status.textContent = `could not refresh (${error.message}); trying again.`;
          if (error.status === 401) return;
        }
      }
      setTimeout(refresh, PERIOD_MS);
    }
    setTimeout(refresh, PERIOD_MS);
  }

  Console.onReady(init);
})();
