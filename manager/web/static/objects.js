// Object pages (templates/admin/object.html): tabs that switch in place and follow the keyboard, the desktop's
// live screenshot, and the administrator's console button. Reads go to the JSON API with the session; the console
// file comes from GET /api/v1/desktops/{id}/console (an audited action), never from logic copied here.
"use strict";

(() => {
  const SCREEN_PERIOD_MS = 5000;

  // ---- tabs: role=tablist/tab/tabpanel; the tabs are links (?tab=...) that also work without this script --------
  function initTabs() {
    const list = document.querySelector('.object [role="tablist"]');
    if (!list) return;
    const tabs = [...list.querySelectorAll('[role="tab"]')];
    function select(tab, focus) {
      for (const t of tabs) {
        const on = t === tab;
        t.setAttribute("aria-selected", String(on));
        t.tabIndex = on ? 0 : -1;
        document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
      }
      if (focus) tab.focus();
      const url = new URL(location.href);
      url.searchParams.set("tab", tab.id.replace(/^object-tab-/, ""));
      history.replaceState(null, "", url);
    }
    list.addEventListener("click", (event) => {
      const tab = event.target.closest('[role="tab"]');
      if (!tab || event.ctrlKey || event.metaKey || event.shiftKey) return;  // a new window keeps the link
      event.preventDefault();
      select(tab, true);
    });
    list.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(document.activeElement);
      if (index < 0) return;
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next !== undefined) {
        event.preventDefault();
        select(tabs[(next + tabs.length) % tabs.length], true);
      } else if (event.key === " ") {
        event.preventDefault();
        select(tabs[index], true);
      }
    });
  }

  // ---- the desktop's screen, refreshed while the page is open and visible -----------------------------------------
  function initScreenshot() {
    const figure = document.querySelector("[data-screenshot]");
    if (!figure) return;
    const img = figure.querySelector("img");
    const caption = figure.querySelector("figcaption");
    let shown = null, busy = false;

    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(figure.dataset.screenshot, { credentials: "same-origin", cache: "no-store",
                                                                  headers: { "Accept": "image/png" } });
        if (!response.ok) {
          let detail = null;
          try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
          const error = new Error(detail || `${response.status} ${response.statusText}`);
          error.status = response.status;
          throw error;
        }
        const url = URL.createObjectURL(await response.blob());
        img.addEventListener("load", () => { if (shown) URL.revokeObjectURL(shown); shown = url; }, { once: true });
        img.src = url;
        img.hidden = false;
        figure.removeAttribute("data-idle");
        caption.textContent = `As of ${new Date().toLocaleTimeString()}`;
      } catch (error) {
        if (error.status === 409) {  // not running: no screen (any more)
          img.hidden = true;
          figure.setAttribute("data-idle", "");
          caption.textContent = error.message;
        } else {
          caption.textContent = `Could not refresh the screen: ${error.message}`;
        }
      } finally {
        busy = false;
      }
    }
    if (!figure.hasAttribute("data-idle")) refresh();
    setInterval(refresh, SCREEN_PERIOD_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  }

  // ---- "Open console": ask the API for a console file and offer it as a download ---------------------------------
  function initConsole() {
    const button = document.querySelector("[data-console]");
    if (!button) return;
    const place = button.parentElement.querySelector(".console-file");
    const protocol = document.getElementById("console-protocol");
    button.addEventListener("click", async () => {
      const wanted = protocol ? protocol.value : button.dataset.protocol;
      button.disabled = true;
      try {
        const answer = await Console.api("GET", `/desktops/${encodeURIComponent(button.dataset.console)}/console` +
                                                `?protocol=${encodeURIComponent(wanted)}`);
        Console.offerFile(place, answer.file);
        const until = answer.console.expires_at ? ` before ${new Date(answer.console.expires_at).toLocaleTimeString()}` : "";
        Console.notify(`Console file for ${answer.desktop_name} is ready: open it${until}.`);
      } catch (error) {
        Console.notify(`Could not open the console: ${error.message}`, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  // A button that makes one API call about the desktop and says how it went; disabled while the call runs.
  function initDesktopButton(selector, call, failed) {
    const button = document.querySelector(selector);
    if (!button) return;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        Console.notify(await call(button));
      } catch (error) {
        Console.notify(`${failed}: ${error.message}`, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---- "Disconnect browser consoles": every manager process closes the desktop's proxied consoles -------------------
  function initDisconnect() {
    initDesktopButton("[data-disconnect-consoles]", async (button) => {
      const id = encodeURIComponent(button.dataset.disconnectConsoles);
      const answer = await Console.api("POST", `/desktops/${id}/browser-console/disconnect`);
      return answer.closed ? `${answer.closed} browser console(s) disconnected.` : "No browser console was open.";
    }, "Could not disconnect");
  }

  // ---- "Send Ctrl+Alt+Del": the keys pressed together on the running desktop's keyboard (a guest at a lock screen) --
  function initSendKeys() {
    initDesktopButton("[data-send-keys]", async (button) => {
      const id = encodeURIComponent(button.dataset.sendKeys);
      const answer = await Console.api("POST", `/desktops/${id}/send-keys`, { keys: button.dataset.keys.split(" ") });
      return `Sent ${answer.keys.join("+")}.`;
    }, "Could not send the keys");
  }

  Console.onReady(initTabs);
  Console.onReady(initSendKeys);
  Console.onReady(initDisconnect);
  Console.onReady(initScreenshot);
  Console.onReady(initConsole);
})();
