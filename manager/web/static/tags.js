// Tags on the search results (templates/admin/_tag_tools.html): pick an existing tag, or type a new name, and add it
// to the selected rows or remove it from them. Every change goes through the API: POST /api/v1/tags for a new tag,
// POST / DELETE /api/v1/tags/{id}/objects for the rows; the rows' Tags cells then show the change in place.
"use strict";

Console.onReady(() => {
  const tools = document.getElementById("tag-tools");
  if (!tools) return;
  const kind = tools.dataset.kind, query = tools.dataset.query;
  const input = document.getElementById("tag-name"), options = document.getElementById("tag-names");
  const buttons = [...tools.querySelectorAll("[data-tag-action]")];
  const boxes = () => [...document.querySelectorAll("table.results input[data-select]")];
  const chosen = () => boxes().filter((box) => box.checked);
  let tags = null, busy = false;  // tags: name -> id, read once

  async function knownTags() {
    if (!tags) {
      const page = await Console.api("GET", "/tags?per_page=1000&sort=name");
      tags = new Map(page.items.map((tag) => [tag.name, tag.id]));
      options.replaceChildren(...page.items.map((tag) => Object.assign(document.createElement("option"), { value: tag.name })));
    }
    return tags;
  }

  function update() {
    const ready = !busy && chosen().length > 0 && input.value.trim() !== "";
    for (const button of buttons) button.disabled = !ready;
  }

  // The Tags cell of a row, with `name` added (kept in name order) or removed.
  function showTag(row, name, present) {
    const cell = row.querySelector("[data-tags]");
    if (!cell) return;
    const existing = [...cell.querySelectorAll("[data-tag]")];
    const same = existing.find((el) => el.dataset.tag === name);
    if (!present) { same?.remove(); return; }
    if (same) return;
    const link = document.createElement("a");
    link.className = "tag"; link.dataset.tag = name; link.textContent = name;
    link.href = "/admin?" + new URLSearchParams({ q: query + name });
    const after = existing.find((el) => el.dataset.tag > name);
    cell.insertBefore(link, after || null);
  }

  async function apply(attach) {
    const name = input.value.trim(), rows = chosen();
    if (!name || !rows.length) return;
    busy = true; update();
    try {
      const known = await knownTags();
      let id = known.get(name);
      if (!id && !attach) throw new Error(`there is no tag ${name}`);
      if (!id) {
        id = (await Console.api("POST", "/tags", { name })).id;
        known.set(name, id);
        options.appendChild(Object.assign(document.createElement("option"), { value: name }));
      }
      const ids = rows.map((box) => box.value);
      const answer = await Console.api(attach ? "POST" : "DELETE", `/tags/${encodeURIComponent(id)}/objects`, { kind, ids });
      for (const box of rows) showTag(box.closest("tr"), name, attach);
      const noun = `${ids.length} ${kind}${ids.length === 1 ? "" : "s"}`, same = ids.length - answer.changed;
      Console.notify(attach ? `Tagged ${noun} with ${name}` + (same ? ` (${same} already had it)` : "")
                            : `Removed ${name} from ${noun}` + (same ? ` (${same} did not have it)` : ""));
    } catch (error) {
      Console.notify(`Could not ${attach ? "add" : "remove"} the tag: ${error.message}`, "error");
    } finally {
      busy = false; update();
    }
  }

  // Delegated, so rows that static/actions.js brings back after an action keep working. Selecting all is done
  // here too: actions.js does it only where the desktop actions are shown (setting a box twice is harmless).
  document.addEventListener("change", (event) => {
    if (event.target.matches?.("table.results input[data-select-all]")) {
      for (const box of boxes()) box.checked = event.target.checked;
    }
    if (event.target.matches?.("table.results input[data-select], table.results input[data-select-all]")) update();
  });
  input.addEventListener("input", update);
  input.addEventListener("focus", () => knownTags().catch(() => {}), { once: true });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); if (!buttons[0].disabled) apply(true); }
  });
  for (const button of buttons) button.addEventListener("click", () => apply(button.dataset.tagAction === "attach"));
  update();
});
