// The live parts of every console page: the events drawer and the jobs tray (markup: templates/_live_tools.html and
// _live_panels.html). Loaded after console.js; adds to the Console object:
//
//   Console.watchJob(jobId) -> Promise<JobOut>
//       Call it after starting a job (e.g. `const job = await Console.api("POST", "/desktops/bulk/reboot", ...)`,
//       then `Console.watchJob(job.id)`): the jobs tray opens and shows the job's progress until it finishes; the
//       promise resolves with the job's final JobOut (state succeeded, failed or cancelled: check `state`).
//   Console.onEvent(fn)
//       fn(event) for every event the stream delivers (an EventOut: id, time, severity, code, message, *_id…).
//   Console.renderEvent(event) -> <li>
//       One event as the drawer shows it (time, severity, message linked to its object's page).
//   Console.isAlert(event) -> bool
//       Whether an event belongs in the Alerts list.
"use strict";

(() => {
  if (typeof Console === "undefined") return;

  // ---- what an alert is, and how an event is shown ----------------------------------------------------------------
  // Alerts are, for now, the events of these severities (the dashboard's "open alerts" use the same rule:
  // manager/dashboard.py ALERT_SEVERITIES). When alerts get a state of their own, this function and the Alerts
  // list's loading (loadAlerts) are the places to change.
  const ALERT_SEVERITIES = ["alert", "error"];
  const isAlert = (event) => ALERT_SEVERITIES.includes(event.severity);
  const OPEN_MS = 24 * 3600 * 1000;  // the unread badge counts alerts of the last day (dashboard.py ALERT_WINDOW)

  // The page of the object an event is about, most specific first (the same order as templates/_event_item.html).
  const OBJECT_PAGES = [["desktop_id", "desktops"], ["host_id", "hosts"], ["pool_id", "pools"],
                        ["template_id", "templates"], ["user_id", "users"], ["job_id", "jobs"]];
  function eventLink(event) {
    for (const [field, kind] of OBJECT_PAGES) if (event[field]) return `/admin/${kind}/${encodeURIComponent(event[field])}`;
    return `/admin/events/${event.id}`;
  }

  // The API's timestamps are UTC; one without an offset is read as UTC too.
  const parseTime = (iso) => new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
  // "2024-05-01 12:00:00", UTC to the second, as the server's `when` filter writes timestamps.
  function when(iso) {
    if (!iso) return "—";
    const date = parseTime(iso);
    return isNaN(date) ? iso : date.toISOString().slice(0, 19).replace("T", " ");
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) if (value !== undefined && value !== null) node.setAttribute(key, value);
    node.append(...children);
    return node;
  }

  // The same markup as templates/_event_item.html.
  function renderEvent(event) {
    const severity = String(event.severity).replaceAll("_", " ");
    return el("li", { class: "event-item", "data-id": event.id },
      el("time", { datetime: event.time }, when(event.time)), " ",
      el("span", { class: `state s-${event.severity}` }, severity), " ",
      el("a", { href: eventLink(event) }, event.message));
  }

  const listeners = [];
  Object.assign(Console, { isAlert, renderEvent, when, onEvent: (fn) => listeners.push(fn), watchJob: () => Promise.reject(new Error("no jobs tray on this page")) });

  // ---- panels: the drawer and the tray share opening, closing and the keyboard --------------------------------------
  const panels = [];
  function panel(buttonId, panelId, { onOpen = () => {}, onClose = () => {} } = {}) {
    const button = document.getElementById(buttonId), box = document.getElementById(panelId);
    if (!button || !box) return null;
    const self = {
      button, box,
      get open() { return !box.hidden; },
      show(focus = true) {
        panels.forEach((other) => other !== self && other.hide(false));
        box.hidden = false; button.setAttribute("aria-expanded", "true");
        onOpen();
        if (focus) (box.querySelector('[role=tab][aria-selected=true]') || box.querySelector("[data-close]")).focus();
      },
      hide(restoreFocus = true) {
        if (box.hidden) return;
        box.hidden = true; button.setAttribute("aria-expanded", "false");
        onClose();
        if (restoreFocus) button.focus();
      },
    };
    button.addEventListener("click", () => (self.open ? self.hide() : self.show()));
    box.querySelector("[data-close]").addEventListener("click", () => self.hide());
    box.addEventListener("keydown", (event) => { if (event.key === "Escape") { event.preventDefault(); self.hide(); } });
    panels.push(self);
    return self;
  }

  function showEmpty(list) {
    const note = document.querySelector(`[data-empty-for="${list.id}"]`);
    if (note) note.hidden = list.children.length > 0;
  }

  // ---- the events drawer ----------------------------------------------------------------------------------------------
  const MAX_ITEMS = 100;
  const SEEN_KEY = "vdi.console.seenAlertId";

  function initEvents() {
    const alertsList = document.getElementById("alerts-list"), eventsList = document.getElementById("events-list");
    const badge = document.getElementById("events-unread"), badgeText = document.getElementById("events-unread-text");
    const streamState = document.getElementById("events-stream-state");
    const tabs = [...document.querySelectorAll('#events-drawer [role="tab"]')];
    let lastId = 0, seen = Number(localStorage.getItem(SEEN_KEY) || 0), alerts = [];
    const drawer = panel("events-button", "events-drawer", { onOpen: () => { if (selectedTab() === "tab-alerts") markSeen(); } });
    if (!drawer) return;

    const selectedTab = () => tabs.find((tab) => tab.getAttribute("aria-selected") === "true").id;
    function selectTab(tab, focus = true) {
      tabs.forEach((t) => {
        const on = t === tab;
        t.setAttribute("aria-selected", String(on)); t.tabIndex = on ? 0 : -1;
        document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
      });
      if (focus) tab.focus();
      if (tab.id === "tab-alerts") markSeen();
    }
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => selectTab(tab));
      tab.addEventListener("keydown", (event) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
        if (step) { event.preventDefault(); selectTab(tabs[(i + step + tabs.length) % tabs.length]); }
      });
    });

    function markSeen() {
      const newest = alerts.reduce((max, a) => Math.max(max, a.id), 0);
      if (newest > seen) { seen = newest; localStorage.setItem(SEEN_KEY, String(seen)); }
      updateBadge();
    }
    function updateBadge() {
      const unread = alerts.filter((a) => a.id > seen && Date.now() - parseTime(a.time) < OPEN_MS).length;
      badge.textContent = unread ? (unread > 99 ? "99+" : String(unread)) : "";
      badgeText.textContent = unread ? `${unread} unread alert${unread === 1 ? "" : "s"}` : "";
      document.getElementById("alerts-new").textContent = badge.textContent;
    }
    function add(list, item, atTop) {
      if (list.querySelector(`[data-id="${item.id}"]`)) return;
      const node = renderEvent(item);
      if (atTop) { node.classList.add("new"); list.prepend(node); } else list.append(node);
      while (list.children.length > MAX_ITEMS) list.lastElementChild.remove();
      showEmpty(list);
    }
    function take(item, live) {
      lastId = Math.max(lastId, item.id);
      add(eventsList, item, live);
      if (isAlert(item) && !alerts.some((a) => a.id === item.id)) {
        alerts.push(item);
        alerts.sort((a, b) => b.id - a.id);
        alerts.length = Math.min(alerts.length, MAX_ITEMS);
        add(alertsList, item, live);
        if (drawer.open && selectedTab() === "tab-alerts") markSeen(); else updateBadge();
      }
      if (live) listeners.forEach((fn) => { try { fn(item); } catch (error) { console.error(error); } });
    }

    // The newest events and alerts first (newest at the top), then everything after them from the stream.
    async function loadAlerts() {
      const pages = await Promise.all(ALERT_SEVERITIES.map((severity) =>
        Console.api("GET", `/events?severity=${severity}&per_page=25`)));
      return pages.flatMap((page) => page.items).sort((a, b) => b.id - a.id).slice(0, 25);
    }
    async function load() {
      try {
        const [recent, latestAlerts] = await Promise.all([Console.api("GET", "/events?per_page=50"), loadAlerts()]);
        latestAlerts.forEach((item) => { alerts.push(item); add(alertsList, item, false); lastId = Math.max(lastId, item.id); });
        recent.items.forEach((item) => take(item, false));
        updateBadge();
      } catch (error) {
        streamState.textContent = `Could not load events: ${error.message}`;
      }
      [alertsList, eventsList].forEach(showEmpty);
      stream();
    }

    // The SSE stream, read with fetch so that every event arrives whatever its `event:` name (the route names each
    // event by its code; EventSource would need one listener per code). The session cookie authenticates it; after a
    // drop it reconnects with Last-Event-ID, as EventSource does, and the server resumes after that id.
    let retry = 1000;
    async function stream() {
      try {
        const response = await fetch("/api/v1/events/stream", {
          credentials: "same-origin", cache: "no-store",
          headers: { "Accept": "text/event-stream", "Last-Event-ID": String(lastId) },
        });
        if (response.status === 401 || response.status === 403) { streamState.textContent = "not live (log in again)"; return; }
        if (!response.ok || !response.body) throw new Error(`${response.status}`);
        streamState.textContent = "live"; retry = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((line) => line.startsWith("data:"))
              .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
            if (!data) continue;  // a comment (keep-alive)
            try { take(JSON.parse(data), true); } catch (error) { console.error("bad event", error); }
          }
        }
      } catch (_) { /* dropped: reconnect below */ }
      streamState.textContent = "reconnecting…";
      setTimeout(stream, retry);
      retry = Math.min(retry * 2, 30000);
    }

    load();
  }

  // ---- the jobs tray -------------------------------------------------------------------------------------------------
  const FINISHED = ["succeeded", "failed", "cancelled"];
  const FAST_MS = 2000, SLOW_MS = 15000;

  function duration(seconds) {
    if (seconds == null) return "";
    if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function renderJob(job) {
    const title = job.description || job.kind;
    const progress = el("progress", { max: job.total || 100, "aria-label": `Progress of ${title}` });
    if (job.total) progress.value = job.done;
    else if (FINISHED.includes(job.state)) progress.value = 100;  // no count: full when finished, else indeterminate
    const facts = [job.kind, job.total ? `${job.done}/${job.total}` : ""];
    if (job.state === "running" && job.eta_seconds != null) facts.push(`ETA ${duration(job.eta_seconds)}`);
    return el("li", { class: "job-item", "data-id": job.id, "data-state": job.state },
      el("div", { class: "job-line" },
        el("a", { href: `/admin/jobs/${encodeURIComponent(job.id)}` }, title), " ",
        el("span", { class: `state s-${job.state}` }, job.state)),
      progress,
      el("div", { class: "job-meta muted" }, facts.filter(Boolean).join(" · ")),
      ...(job.error ? [el("div", { class: "job-error" }, job.error)] : []));
  }

  function initJobs() {
    const list = document.getElementById("jobs-list");
    const badge = document.getElementById("jobs-running"), badgeText = document.getElementById("jobs-running-text");
    const watched = new Map();   // job id -> {resolve, promise}
    const known = new Map();     // job id -> latest JobOut of the jobs this page watched
    let running = [], recent = [], timer = null, busy = false;
    const tray = panel("jobs-button", "jobs-tray", { onOpen: () => refresh() });
    if (!tray) return;

    function render() {
      const byId = new Map();
      [...running, ...known.values(), ...recent].forEach((job) => { if (!byId.has(job.id)) byId.set(job.id, job); });
      const jobs = [...byId.values()].sort((a, b) =>
        (FINISHED.includes(a.state) - FINISHED.includes(b.state)) || String(b.created_at).localeCompare(String(a.created_at)));
      list.replaceChildren(...jobs.slice(0, 30).map(renderJob));
      showEmpty(list);
      const count = running.length;
      badge.textContent = count ? String(count) : "";
      badgeText.textContent = count ? `${count} running` : "";
    }

    async function refresh() {
      if (busy) return;
      busy = true;
      clearTimeout(timer);
      try {
        const asks = [Console.api("GET", "/jobs?state=running&per_page=50")];
        if (tray.open) asks.push(Console.api("GET", "/jobs?per_page=15"));
        const [runningPage, recentPage] = await Promise.all(asks);
        running = runningPage.items;
        if (recentPage) recent = recentPage.items;
        const current = new Map([...running, ...recent].map((job) => [job.id, job]));
        await Promise.all([...watched.keys()].map(async (id) => {
          const job = current.get(id) || await Console.api("GET", `/jobs/${encodeURIComponent(id)}`);
          known.set(id, job);
          if (FINISHED.includes(job.state)) {
            watched.get(id).resolve(job);
            watched.delete(id);
            Console.notify(`${job.description || job.kind}: ${job.state}`, job.state === "succeeded" ? "info" : "error");
          }
        }));
        render();
      } catch (error) {
        if (error.status === 401) return;  // logged out: stop polling
      } finally {
        busy = false;
      }
      const fast = tray.open || running.length > 0 || watched.size > 0;
      timer = setTimeout(refresh, fast ? FAST_MS : SLOW_MS);
    }

    Console.watchJob = (jobId) => {
      if (!watched.has(jobId)) {
        let resolve;
        const promise = new Promise((r) => { resolve = r; });
        watched.set(jobId, { resolve, promise });
      }
      const { promise } = watched.get(jobId);
      if (!tray.open) tray.show(false);
      busy ? setTimeout(refresh, 200) : refresh();
      return promise;
    };
    // A job's events (started, finished, failed) mean the counts moved: look now rather than at the next tick.
    let soon = null;
    Console.onEvent((event) => { if (event.job_id) { clearTimeout(soon); soon = setTimeout(refresh, 300); } });

    refresh();
  }

  Console.onReady(initEvents);
  Console.onReady(initJobs);
})();
