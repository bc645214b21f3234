// Actions in the admin console: bulk actions on the selected search results, a desktop's, pool's, host's and
// template's actions on their pages, and the new-pool form. Every change is a call to the JSON API (Console.api,
// with the session's CSRF token): one implementation of each action, the API's. Long actions answer with a job,
// which the jobs tray follows (Console.watchJob) until it finishes; then the page shows the new state.
// Destructive actions ask first, naming what they affect (POST /api/v1/desktops/bulk/preview says how many desktops
// and which have users).
"use strict";

(() => {
  if (typeof Console === "undefined" || window.ConsoleActions) return;  // the script may be included twice
  window.ConsoleActions = true;
  const { api, notify } = Console;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
    node.append(...children);
    return node;
  }
  const plural = (n, one, many = one + "s") => `${n.toLocaleString("en")} ${n === 1 ? one : many}`;

  // ---- confirmation: a modal <dialog> named by its heading, its text as its description -------------------------
  let confirmSeq = 0;
  function confirmDialog({ title, lines = [], names = [], total = 0, namesLabel = "", confirmLabel = "Confirm", danger = true }) {
    return new Promise((resolve) => {
      const n = ++confirmSeq;
      const text = el("div", { id: `confirm-text-${n}` }, ...lines.filter(Boolean).map((line) => el("p", {}, line)));
      if (names.length) {
        const more = total - names.length;
        text.append(el("p", { class: "names-label" }, namesLabel),
          el("ul", { class: "names" }, ...names.map((name) => el("li", {}, name)),
            ...(more > 0 ? [el("li", { class: "muted" }, `and ${more.toLocaleString("en")} more`)] : [])));
      }
      const cancel = el("button", { type: "button", autofocus: "" }, "Cancel");
      const ok = el("button", { type: "button", class: danger ? "danger-fill" : "primary" }, confirmLabel);
      const dialog = el("dialog", { class: "action-dialog confirm", role: "alertdialog", "aria-labelledby": `confirm-title-${n}`,
                                    "aria-describedby": `confirm-text-${n}` },
        el("h2", { id: `confirm-title-${n}` }, title), text, el("div", { class: "dialog-buttons" }, cancel, ok));
      cancel.addEventListener("click", () => dialog.close("cancel"));
      ok.addEventListener("click", () => dialog.close("ok"));
      dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "ok"); });
      document.body.append(dialog);
      dialog.showModal();
      cancel.focus();
    });
  }

  // What each desktop action is called, and when it asks first: always, only when desktops are in use, never.
  const DESKTOP_ACTIONS = {
    start: { label: "Start", ask: "never" },
    stop: { label: "Shut down", ask: "in_use", why: "Users logged in lose their session; unsaved work may be lost." },
    poweroff: { label: "Power off", ask: "always", why: "Like pulling the plug: unsaved work is lost." },
    reboot: { label: "Reboot", ask: "in_use", why: "Users logged in lose their session while it restarts." },
    // a desktop's page only (not bulk actions): a suspended desktop is resumed as it was, so neither asks first
    suspend: { label: "Suspend", ask: "never" },
    resume: { label: "Resume", ask: "never" },
    reset: { label: "Reset", ask: "always", why: "The disk goes back to the template: everything changed on it is lost." },
    deprovision: { label: "Delete", ask: "always", why: "Removed for good: the disk and the domain are deleted." },
    // bulk only (a desktop's page has dialogs of its own for these); `loggedIn`: say how many have a user logged in
    reimage: { label: "Re-image", ask: "always", loggedIn: true,
               why: "Each disk is replaced by a fresh one on the template's latest version: everything changed on it is lost." },
    snapshot: { label: "Snapshot", ask: "always", safe: true, why: "Each desktop's disk is kept as it is now under this name." },
    revert: { label: "Revert", ask: "always", loggedIn: true,
              why: "Each disk goes back to the snapshot: what changed since is lost." },
    assign: { label: "Assign", ask: "always", safe: true,
              why: "Manual-pool desktops are assigned through their pool; desktops outside pools are attached." },
    unassign: { label: "Unassign", ask: "always", loggedIn: true,
                why: "Pool desktops are taken back from their users and reset to the template; desktops outside pools lose all their users." },
  };

  // Ask before `action` on the desktops of `facts` (POST /desktops/bulk/preview's answer; null when the manager
  // cannot say) if it needs asking. `single`: the one desktop's name (a desktop's page), else the names are listed.
  // `what`: the action's object, said after the desktops ("named before", "to ivy@corp").
  async function confirmDesktops(action, facts, single = null, what = "") {
    const spec = DESKTOP_ACTIONS[action];
    const inUse = facts ? facts.in_use : 0;
    if (spec.ask === "never" || (spec.ask === "in_use" && !inUse)) return true;
    const count = facts ? facts.count : 1;
    const subject = single ? `desktop ${single}` : plural(count, "desktop");
    const using = !inUse ? "" : single ? "a user is logged in" : `${plural(inUse, "has a user", "have users")} logged in`;
    const lines = [`${spec.label} ${subject}${what ? " " + what : ""}${using ? "; " + using : ""}.`, spec.why];
    if (spec.loggedIn && facts && facts.logged_in) {
      lines.push(`${plural(facts.logged_in, "has a user", "have users")} logged in right now` +
                 (action === "unassign" ? ": they lose the desktop." : ": those will fail."));
    }
    if (facts && facts.without_snapshot) {
      lines.push(`${plural(facts.without_snapshot, "has", "have")} no such snapshot: those will fail.`);
    }
    if (!single && inUse) {
      const more = inUse - facts.in_use_names.length;
      lines.push(`In use: ${facts.in_use_names.join(", ")}${more > 0 ? ` and ${more.toLocaleString("en")} more` : ""}.`);
    }
    if (facts && facts.busy) {
      lines.push(single ? "It is busy with another action: this one will be refused."
                        : `${plural(facts.busy, "is", "are")} busy with another action: those will fail.`);
    }
    return confirmDialog({ title: `${spec.label} ${subject}${what ? " " + what : ""}?`, lines, names: single ? [] : facts.names,
                           total: count, namesLabel: "Desktops:", confirmLabel: spec.label, danger: !spec.safe });
  }

  async function preview(action, ids, options = {}) {
    try {
      return await api("POST", "/desktops/bulk/preview", { action, desktop_ids: ids, ...options });
    } catch (error) {
      if (error.status === 404 || error.status === 405) return null;  // an older manager: ask without the counts
      throw error;
    }
  }

  // Follow a job in the jobs tray until it finishes; the final job (null when there is no tray to follow it).
  async function watch(job) {
    try {
      const final = await Console.watchJob(job.id);
      if (final.state === "failed" && final.error) notify(`${final.description || final.kind}: ${final.error}`, "error");
      return final;
    } catch (_) {
      notify(`Started: ${job.description || job.kind}`);
      return null;
    }
  }

  // ---- bulk actions on the selected search results (templates/admin/actions/bulk.html) ----------------------------
  function initBulk() {
    const tools = document.getElementById("bulk-tools");
    if (!tools) return;
    const count = document.getElementById("bulk-count");
    const boxes = () => [...document.querySelectorAll("table.results input[data-select]")];
    let busy = false, last = null;

    function selected() {
      return boxes().filter((box) => box.checked).map((box) => ({ id: box.value, name: box.dataset.name }));
    }
    function update() {
      const all = boxes(), chosen = all.filter((box) => box.checked);
      count.textContent = `${chosen.length.toLocaleString("en")} selected`;
      for (const button of tools.querySelectorAll("[data-bulk]")) button.disabled = busy || chosen.length === 0;
      for (const box of all) box.closest("tr")?.classList.toggle("selected", box.checked);
      const head = document.querySelector("table.results input[data-select-all]");
      if (head) {
        head.checked = all.length > 0 && chosen.length === all.length;
        head.indeterminate = chosen.length > 0 && chosen.length < all.length;
      }
      document.dispatchEvent(new CustomEvent("console:selection", { detail: selected() }));
    }
    // Delegated, so the rows a refresh brings keep working.
    document.addEventListener("click", (event) => {
      const box = event.target.closest?.("table.results input[data-select]");
      if (!box) return;
      const all = boxes();
      if (event.shiftKey && last && all.includes(last)) {  // shift-click: the range from the last box clicked
        const [a, b] = [all.indexOf(last), all.indexOf(box)].sort((x, y) => x - y);
        for (const other of all.slice(a, b + 1)) other.checked = box.checked;
      }
      last = box;
      update();
    });
    document.addEventListener("change", (event) => {
      if (event.target.matches?.("table.results input[data-select-all]")) {
        for (const box of boxes()) box.checked = event.target.checked;
        update();
      } else if (event.target.matches?.("table.results input[data-select]")) update();
    });

    // The results table, the total and the pager again from the server (the same URL: the same query), in place, so
    // the jobs tray and the rest of the page stay as they are. The selection starts empty again.
    async function refreshResults() {
      const response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const id of ["results-body", "result-total"]) {
        const now = document.getElementById(id), next = fresh.getElementById(id);
        if (now && next) now.replaceWith(document.importNode(next, true));
      }
      last = null;
    }

    // Ask (from the preview), send the one job, follow it, name the desktops that failed, show the results again.
    // `facts`: the preview already asked for (a dialog's options were checked with it), `what`: said after the
    // desktops in the confirmation.
    async function run(action, ids, options = {}, facts = undefined, what = "") {
      const label = DESKTOP_ACTIONS[action].label;
      busy = true; update();
      try {
        if (facts === undefined) facts = await preview(action, ids, options);
        if (!(await confirmDesktops(action, facts || { count: ids.length, in_use: 0, busy: 0, names: [], in_use_names: [] },
                                    null, what))) return;
        const job = await api("POST", "/desktops/bulk", { action, desktop_ids: ids, ...options });
        notify(`${label}: ${plural(ids.length, "desktop")}, as one job`);
        const final = await watch(job);
        const failed = Object.entries(final?.result?.failed || {});
        if (failed.length) {
          notify(`${label}: ${plural(failed.length, "desktop")} failed — ` +
                 failed.slice(0, 5).map(([name, why]) => `${name}: ${why}`).join("; ") + (failed.length > 5 ? "…" : ""), "error");
        }
        await refreshResults();
      } catch (error) {
        notify(`${label}: ${error.message}`, "error");
      } finally {
        busy = false; update();
      }
    }

    // The actions that need more than the desktops ask for it in their dialog (bulk.html: #bulk-<action>) first;
    // the options are checked by the preview while the dialog is open, so its errors show in the dialog.
    const users = new Map();
    initDialogs({
      async bulk(form) {
        const ids = selected().map((row) => row.id);
        if (!ids.length) throw new Error("Select desktops first.");
        const { action, user, ...rest } = values(form);
        const options = dropEmpty(Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== false)));
        let what = options.snapshot_name ? `named ${options.snapshot_name}` : "";
        if (action === "assign") {
          options.user_id = users.get(user) || await findUser(user, users);
          if (!options.user_id) throw new Error(`No user ${user}: pick one of the users found as you type.`);
          what = `to ${user}`;
        }
        const facts = await preview(action, ids, options);
        form.closest("dialog").close();
        await run(action, ids, options, facts, what);
      },
    });
    initUserPicker(users, document.querySelector("#bulk-tools ~ dialog input[data-user-picker]"));

    tools.addEventListener("click", async (event) => {
      const button = event.target.closest("[data-bulk]");
      if (!button || busy) return;
      const action = button.dataset.bulk;
      const ids = selected().map((row) => row.id);
      if (!ids.length) return;
      const dialog = document.getElementById(`bulk-${action}`);
      if (dialog) {
        const form = dialog.querySelector("form");
        form.reset();
        formError(form, "");
        dialog.showModal();
        return;
      }
      await run(action, ids);
    });
    update();
  }

  // ---- dialogs with a form: opened by data-open, sent by their form's data-submit handler ---------------------------
  function formError(form, message) {
    const box = form.querySelector(".form-error");
    if (!box) { notify(message, "error"); return; }
    box.textContent = message;
    box.hidden = !message;
  }

  function initDialogs(handlers) {
    document.addEventListener("click", (event) => {
      const opener = event.target.closest("[data-open]");
      if (opener) {
        const dialog = document.getElementById(opener.dataset.open);
        if (!dialog) return;
        const form = dialog.querySelector("form");
        if (form) formError(form, "");
        dialog.showModal();
        return;
      }
      const closer = event.target.closest("dialog [data-close]");
      if (closer) closer.closest("dialog").close();
    });
    for (const form of document.querySelectorAll("form[data-submit]")) {
      const handler = handlers[form.dataset.submit];
      if (!handler) continue;
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const submitter = event.submitter;
        const checks = !submitter || !submitter.name;  // "Delete it" and the like need no filled-in fields
        if (checks && !form.reportValidity()) return;
        formError(form, "");
        const buttons = [...form.querySelectorAll("button[type=submit]")];
        buttons.forEach((b) => { b.disabled = true; });
        form.setAttribute("aria-busy", "true");
        try {
          await handler(form, submitter);
        } catch (error) {
          formError(form, error.message);
        } finally {
          buttons.forEach((b) => { b.disabled = false; });
          form.removeAttribute("aria-busy");
        }
      });
    }
  }

  // A form's fields as the API takes them: numbers as numbers, check boxes as booleans, "" as absent.
  function values(form, { changedOnly = false } = {}) {
    const out = {};
    for (const field of form.elements) {
      if (!field.name || field.type === "submit" || field.type === "button" || field.type === "file") continue;
      if (field.type === "radio" && !field.checked) continue;
      if (changedOnly && !changed(field)) continue;
      let value = field.type === "checkbox" ? field.checked : field.value.trim();
      if (field.type === "number" && value !== "") value = Number(value);
      if (field.type === "datetime-local") value = value ? value + ":00Z" : null;  // the form's times are UTC
      out[field.name] = value;
    }
    return out;
  }
  function changed(field) {
    if (field.type === "checkbox" || field.type === "radio") return field.checked !== field.defaultChecked;
    if (field.tagName === "SELECT") return [...field.options].some((o) => o.selected !== o.defaultSelected);
    return field.value !== field.defaultValue;
  }
  const dropEmpty = (body) => Object.fromEntries(Object.entries(body).filter(([, v]) => v !== "" && v !== null));
  // The forms ask for minutes; the API takes lease_seconds and max_lease_seconds ("" clears one).
  function leaseSeconds(body) {
    for (const name of ["lease", "max_lease"]) {
      if (`${name}_minutes` in body) {
        body[`${name}_seconds`] = body[`${name}_minutes`] === "" ? null : body[`${name}_minutes`] * 60;
        delete body[`${name}_minutes`];
      }
    }
    return body;
  }
  // The opening hours as typed, one window a line ("mon-fri 08:00-18:00", "sat,sun 22:00-02:00"), become the API's
  // schedule ([{days, start, end}]); the API checks the days and times and says what is wrong.
  const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
  function openingHours(body) {
    if (!("opening_hours" in body)) return body;
    body.schedule = body.opening_hours.split("\n").map((line) => line.trim().toLowerCase()).filter(Boolean)
      .map((line) => {
        const [days = "", hours = ""] = line.split(/\s+/, 2);
        const [start = "", end = ""] = hours.split("-");
        return { days: days.split(",").flatMap((part) => {
          const [from, to] = part.split("-");
          if (!to || !DAYS.includes(from) || !DAYS.includes(to)) return [part];
          const out = [];
          for (let i = DAYS.indexOf(from); ; i = (i + 1) % 7) { out.push(DAYS[i]); if (DAYS[i] === to) break; }
          return out;
        }), start, end };
      });
    delete body.opening_hours;
    return body;
  }

  const pageObject = () => document.querySelector(".object[data-kind][data-id]");
  // Show the page again with what changed. `jobs`: jobs just followed in the tray, which the reloaded page opens
  // its tray on (?shown=<ids>), so the person sees how they ended.
  function reload(...jobs) {
    const ids = jobs.filter(Boolean).map((job) => job.id || job);
    if (!ids.length) { location.reload(); return; }
    const url = new URL(location.href);
    url.searchParams.set("shown", ids.join(","));
    location.replace(url);
  }

  // The page again now, following a job that goes on in the jobs tray; shown again once it has ended.
  function reloadWatching(jobId) {
    const url = new URL(location.href);
    url.searchParams.set("watch", jobId);
    location.replace(url);
  }

  // ---- a desktop's page ----------------------------------------------------------------------------------------
  function desktopHandlers(id, name) {
    const base = `/desktops/${encodeURIComponent(id)}`;
    const users = new Map();  // what the user picker found: "user@domain" -> id
    return {
      async reimage(form) {
        const body = dropEmpty(values(form));
        const job = await api("POST", `${base}/reimage`, body);
        form.closest("dialog").close();
        await watch(job); reload(job);
      },
      async snapshot(form) {
        const made = await api("POST", `${base}/snapshots`, dropEmpty(values(form)));
        form.closest("dialog").close();
        await watch(made.job); reload(made.job);
      },
      async "snapshot-op"(form, submitter) {
        const chosen = form.querySelector("input[name=snapshot_id]:checked");
        if (!chosen) throw new Error("Choose a snapshot.");
        const op = submitter?.value || "revert";
        const path = `${base}/snapshots/${encodeURIComponent(chosen.value)}`;
        const job = op === "delete" ? await api("DELETE", path) : await api("POST", `${path}/${op}`);
        form.closest("dialog").close();
        await watch(job); reload(job);
      },
      async assign(form) {
        const typed = form.elements.user.value.trim();
        const userId = users.get(typed) || await findUser(typed, users);
        if (!userId) throw new Error(`No user ${typed}: pick one of the users found as you type.`);
        const poolId = form.elements.pool_id.value;
        if (form.elements.via.value === "pool") {
          await api("POST", `/pools/${encodeURIComponent(poolId)}/desktops/${encodeURIComponent(id)}/assign`, { user_id: userId });
        } else {
          await api("POST", `${base}/users`, { user_id: userId });
        }
        notify(`${name} is now ${typed}'s`);
        reload();
      },
      async migrate(form) {
        const job = await api("POST", `${base}/migrate`, dropEmpty(values(form)));
        form.closest("dialog").close();
        await watch(job); reload(job);
      },
      // PATCH the fields changed; the dialog stays open saying per field what the API did (live, at the next boot)
      // and the page shows the new values once it is closed.
      async hardware(form) {
        const body = values(form, { changedOnly: true });
        if (!Object.keys(body).length) { form.closest("dialog").close(); return; }
        const answer = await api("PATCH", base, body);
        let applied = answer.applied;
        if (answer.job_id && Object.values(applied).includes("pending")) {  // the job goes on: its result says
          const final = await watch({ id: answer.job_id, kind: "desktops.redefine" });
          if (final?.state === "succeeded" && final.result.applied) applied = final.result.applied;
        }
        showApplied(form, applied);
        for (const field of form.elements) if (field.name in body) field.defaultValue = field.value;
        form.closest("dialog").addEventListener("close", () => reload(answer.job_id), { once: true });
      },
      async delete(form) {
        const force = form.elements.force?.checked ? "?force=true" : "";
        const job = await api("DELETE", base + force);
        form.closest("dialog").close();
        const final = await watch(job);
        if (!final || final.state === "succeeded") location.assign("/admin?q=Vms%3A");
        else reload(job);
      },
      async detach(form) {
        await api("DELETE", `${base}/users/${encodeURIComponent(form.elements.user_id.value)}`);
        reload();
      },
      users,
    };
  }

  // What a hardware change did, per field, as the PATCH (or its job's result) says.
  const HARDWARE_FIELDS = { cpus: "CPUs", memory_mib: "Memory", monitors: "Monitors" };
  const APPLIED = { live: "applied live", next_boot: "at next boot", pending: "still being applied (see the job)",
                    failed: "failed (see the job)" };
  function showApplied(form, applied) {
    const box = form.querySelector(".hardware-applied");
    const saved = Object.entries(applied);
    box.querySelector("ul").replaceChildren(...(saved.length ? saved : [["", "saved (the desktop has no domain yet)"]])
      .map(([field, how]) => el("li", {}, field ? `${HARDWARE_FIELDS[field] || field}: ${APPLIED[how] || how}` : how)));
    box.hidden = false;
  }

  // The users matching what was typed (a free-text search of Users: names, user names, e-mail addresses), for the
  // picker's suggestions; returns the id of the one whose "user@domain" is exactly `typed`, if any.
  async function findUser(typed, found) {
    const words = typed.replace(/["';\\]/g, "").trim();
    if (!words) return null;
    const query = /^[\w.@-]+$/.test(words) ? `Users: ${words}*` : `Users: "${words}*"`;
    const answer = await api("GET", `/search?page_size=10&q=${encodeURIComponent(query)}`);
    for (const user of answer.items) found.set(`${user.username}@${user.domain}`, user.id);
    return found.get(typed) || null;
  }

  function initUserPicker(users, input = document.querySelector("input[data-user-picker]")) {
    if (!input) return;
    const list = document.getElementById(input.getAttribute("list"));
    let timer = null, seq = 0;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const mine = ++seq;
        const found = new Map();
        try { await findUser(input.value, found); } catch (_) { return; }
        if (mine !== seq) return;
        list.replaceChildren(...[...found.keys()].map((label) => el("option", { value: label })));
        for (const [label, userId] of found) users.set(label, userId);
      }, 150);
    });
  }

  function initDesktop(root) {
    const id = root.dataset.id;
    const name = document.getElementById("object-title")?.textContent.trim() || id;
    const base = `/desktops/${encodeURIComponent(id)}`;
    const handlers = desktopHandlers(id, name);
    initDialogs(handlers);
    initUserPicker(handlers.users);
    const tools = root.querySelector(".object-actions");
    if (!tools) return;
    tools.addEventListener("click", async (event) => {
      const button = event.target.closest("[data-power], [data-disk], [data-preview], [data-unassign]");
      if (!button || button.getAttribute("aria-busy") === "true") return;
      const action = button.dataset.power || button.dataset.disk;
      button.setAttribute("aria-busy", "true");
      try {
        if (action) {
          const facts = DESKTOP_ACTIONS[action].ask === "never" ? null : await preview(action, [id]);
          if (!(await confirmDesktops(action, facts, name))) return;
          if (button.dataset.power) {
            notify(`${DESKTOP_ACTIONS[action].label}: ${name}…`);
            await api("POST", `${base}/${action}`);  // answers once the node has done it
            reload();
          } else {
            const job = await api("POST", `${base}/${action}`);
            await watch(job);
            reload(job);
          }
        } else if (button.dataset.preview) {
          const keep = button.dataset.preview === "commit";
          if (!(await confirmDialog({
            title: keep ? `Keep the previewed snapshot on ${name}?` : `Undo the preview on ${name}?`,
            lines: [keep ? "The disk as it was before the preview is deleted." : "Whatever was written during the preview is lost."],
            confirmLabel: keep ? "Keep it" : "Undo preview" }))) return;
          const job = await api("POST", `${base}/preview/${button.dataset.preview}`);
          await watch(job);
          reload(job);
        } else if (button.dataset.unassign) {
          if (!(await confirmDialog({ title: `Unassign ${name}?`,
            lines: ["Its user no longer holds it; it is reset to the template before anyone else gets it."],
            confirmLabel: "Unassign" }))) return;
          await api("POST", `/pools/${encodeURIComponent(button.dataset.unassign)}/desktops/${encodeURIComponent(id)}/unassign`);
          reload();
        }
      } catch (error) {
        notify(`${button.textContent.replace("…", "")}: ${error.message}`, "error");
      } finally {
        button.removeAttribute("aria-busy");
      }
    });
  }

  // ---- pools: the new-pool form and a pool's page ------------------------------------------------------------------
  async function rollout(form) {
    const poolId = form.elements.pool_id.value;
    const answer = await api("POST", `/pools/${encodeURIComponent(poolId)}/template-version`,
                             { template_version_id: form.elements.template_version_id.value });
    form.closest("dialog").close();
    notify(`Rollout: ${plural(answer.moved_now.length, "desktop")} re-imaged now, ` +
           `${answer.pending.length.toLocaleString("en")} at their next logoff, ${answer.unchanged.length.toLocaleString("en")} already there`);
    const jobs = answer.job_ids.slice(0, 20);  // the tray follows the first ones; the rest run all the same
    await Promise.all(jobs.map((jobId) => watch({ id: jobId, kind: "rollout" })));
    return jobs;
  }

  function poolHandlers(id) {
    const base = `/pools/${encodeURIComponent(id)}`;
    return {
      async resize(form) {
        const body = values(form);
        const job = await api("POST", `${base}/resize`, body);
        form.closest("dialog").close();
        await watch(job); reload(job);
      },
      async "edit-pool"(form) {
        const body = openingHours(leaseSeconds(values(form, { changedOnly: true })));
        if (!Object.keys(body).length) { form.closest("dialog").close(); return; }
        await api("PATCH", base, body);
        form.closest("dialog").close();
        notify("Pool saved");
        reload();
      },
      async rollout(form) { reload(...await rollout(form)); },
    };
  }

  function initPool(root) {
    const id = root.dataset.id;
    const base = `/pools/${encodeURIComponent(id)}`;
    initDialogs(poolHandlers(id));
    root.querySelector(".object-actions")?.addEventListener("click", async (event) => {
      const button = event.target.closest("[data-pool-op]");
      if (!button) return;
      const name = document.getElementById("object-title")?.textContent.trim() || id;
      try {
        if (button.dataset.poolOp === "provision") {
          const job = await api("POST", `${base}/provision`);
          await watch(job);
          reload(job);
        } else if (button.dataset.poolOp === "delete") {
          if (!(await confirmDialog({ title: `Delete pool ${name}?`,
            lines: ["Only an empty pool can be deleted: resize it to 0 first."], confirmLabel: "Delete" }))) return;
          await api("DELETE", base);
          location.assign("/admin?q=Pools%3A");
        }
      } catch (error) {
        notify(`${button.textContent}: ${error.message}`, "error");
      }
    });
  }

  function initPoolForm() {
    const form = document.getElementById("pool-form");
    if (!form) return;
    const type = form.elements.pool_type, lending = form.querySelector("[data-time-based]");
    const showLending = () => {
      const on = type.value === "time_based";
      lending.hidden = !on;
      for (const field of lending.querySelectorAll("input, select")) field.disabled = !on;
    };
    type.addEventListener("change", showLending);
    showLending();
    initDialogs({
      async "new-pool"(form) {
        const body = leaseSeconds(dropEmpty(values(form)));
        const pool = await api("POST", "/pools", body);
        let target = `/admin/pools/${encodeURIComponent(pool.id)}`;
        if (pool.size > 0) {
          const job = await api("POST", `/pools/${encodeURIComponent(pool.id)}/provision`);
          target += `?watch=${encodeURIComponent(job.id)}`;  // the pool's page follows the job in the jobs tray
        }
        location.assign(target);
      },
    });
  }

  // ---- Cancel on a running job (a host's drain, a job's page): POST /jobs/{id}/cancel, then the page again --------
  function initCancelJob(root) {
    root.querySelector("[data-cancel-job]")?.addEventListener("click", async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const job = await api("POST", `/jobs/${encodeURIComponent(button.dataset.cancelJob)}/cancel`);
        reloadWatching(job.id);  // shown again when it has stopped
      } catch (error) {
        notify(`${button.textContent}: ${error.message}`, "error");
        button.disabled = false;
      }
    });
  }

  // ---- a host's page: maintenance (draining its running desktops by live migration, cancellable) and back -------------
  function initHost(root) {
    const base = `/hosts/${encodeURIComponent(root.dataset.id)}`;
    initDialogs({
      async maintenance(form) {
        const host = await api("POST", `${base}/maintenance`, values(form));
        // the page again at once (its Maintenance card, with Cancel), following the drain in the jobs tray
        host.drain_job_id ? reloadWatching(host.drain_job_id) : reload();
      },
      async display(form) {
        await api("PATCH", base, values(form));
        reload();
      },
    });
    initCancelJob(root);
    root.querySelector("[data-host-op=activate]")?.addEventListener("click", async (event) => {
      try {
        const host = await api("POST", `${base}/activate`);
        notify(`${host.name} is ${host.status.replace("_", " ")}`);
        reload();
      } catch (error) {
        notify(`Activate: ${error.message}`, "error");
        event.target.disabled = false;
      }
    });
  }

  // ---- a template's page: import an image (uploaded from this browser), roll a version out -----------------------
  // The upload is the request body itself (POST /api/v1/templates/{id}/upload streams it to the storage domain);
  // XMLHttpRequest rather than fetch because it reports the upload's progress.
  function upload(path, file, onProgress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/api/v1" + path);
      request.setRequestHeader("X-CSRF-Token", Console.csrf());
      request.setRequestHeader("Content-Type", "application/octet-stream");
      request.setRequestHeader("Accept", "application/json");
      request.upload.addEventListener("progress", (event) => { if (event.lengthComputable) onProgress(event.loaded / event.total); });
      request.addEventListener("load", () => {
        let data = null;
        try { data = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        if (request.status >= 200 && request.status < 300) resolve(data);
        else reject(Object.assign(new Error((data && data.detail) || `${request.status} ${request.statusText}`), { status: request.status }));
      });
      request.addEventListener("error", () => reject(new Error("the upload was interrupted")));
      request.send(file);
    });
  }

  function initTemplate(root) {
    const base = `/templates/${encodeURIComponent(root.dataset.id)}`;
    initDialogs({
      async import(form) {
        const file = form.elements.file.files[0];
        if (!file) throw new Error("Choose an image file.");
        const params = new URLSearchParams(dropEmpty({ format: form.elements.format.value,
                                                       version_name: form.elements.version_name.value.trim() }));
        const bar = form.querySelector(".upload-progress");
        bar.hidden = false;
        const job = await upload(`${base}/upload?${params}`, file, (share) => { bar.value = Math.round(share * 100); });
        form.closest("dialog").close();
        await watch(job); reload(job);
      },
      async rollout(form) { reload(...await rollout(form)); },
    });
  }

  // ---- a page opened to follow a job (/admin/pools/{id}?watch=<job id> after the new-pool form) --------------------
  // ?shown=<ids>: jobs that finished before this page was reloaded, shown in the tray.
  function followWatchedJob() {
    const url = new URL(location.href);
    const jobId = url.searchParams.get("watch"), shown = url.searchParams.get("shown");
    if (!jobId && !shown) return;
    url.searchParams.delete("watch");
    url.searchParams.delete("shown");
    history.replaceState(null, "", url);
    if (jobId) watch({ id: jobId, kind: "job" }).then((final) => { if (final) reload(final); });
    for (const id of (shown || "").split(",").filter(Boolean).slice(0, 20)) Console.watchJob(id).catch(() => {});
  }

  Console.onReady(() => {
    initBulk();
    initPoolForm();
    const root = pageObject();
    const init = root && { desktop: initDesktop, pool: initPool, host: initHost, template: initTemplate,
                            job: initCancelJob }[root.dataset.kind];
    if (init) init(root);
    followWatchedJob();
  });
  Object.assign(Console, { confirmDialog });
})();
