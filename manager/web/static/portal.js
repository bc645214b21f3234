// The self-service portal: Connect, reboot, reset, log off, extend a lease and the remembered choices, each through
// the JSON API (Console.api). After an action the lists are read again from the page itself, so what they show is
// always what the server says (one rendering: the template's).
"use strict";

(() => {
  const main = () => document.querySelector("main.portal");
  // Native clients take every protocol the broker offers: .vv (SPICE, VNC) for virt-viewer, .rdp for RDP clients.
  const NATIVE = { protocols: ["spice", "rdp", "vnc"] };

  async function refresh() {
    const response = await fetch(location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("portal-lists");
    if (fresh) document.getElementById("portal-lists").replaceWith(fresh);
  }

  async function connect(body, button) {
    const result = document.getElementById("connect-result");
    if (button) { button.disabled = true; button.setAttribute("aria-busy", "true"); }
    result.querySelector(".connect-help").textContent =
      "Connecting… a stopped desktop is started first, which can take a minute.";
    result.querySelector(".console-file").replaceChildren();
    result.hidden = false;
    try {
      if (main().querySelector('input[name="console_client"]:checked')?.value === "browser") {
        // The browser console: a single-use ticket, handed to the console page in the URL's fragment.
        const opened = await Console.api("POST", "/broker/browser-console", body);
        location.assign(`${opened.page}#ticket=${encodeURIComponent(opened.ticket)}`);
        return;
      }
      const answer = await Console.api("POST", "/broker/connect", { ...body, client: NATIVE });
      const until = answer.console.expires_at ? ` before ${new Date(answer.console.expires_at).toLocaleTimeString()}` : "";
      const app = answer.protocol === "rdp" ? "a Remote Desktop client" : "your viewer app (remote-viewer)";
      result.querySelector(".connect-help").textContent =
        `${answer.desktop_name} is ready. Open the downloaded file with ${app}${until}.`;
      result.hidden = false;
      Console.offerFile(result.querySelector(".console-file"), answer.file);
      await refresh();
    } catch (error) {
      result.hidden = true;
      Console.notify(`Could not connect: ${error.message}`, "error");
    } finally {
      if (button) { button.disabled = false; button.removeAttribute("aria-busy"); }
    }
  }

  function askReset(name) {
    const dialog = document.getElementById("reset-dialog");
    dialog.querySelector(".reset-name").textContent = name;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "reset"), { once: true });
      dialog.showModal();
    });
  }

  const ACTIONS = {
    async reboot(b) {
      await Console.api("POST", `/me/desktops/${encodeURIComponent(b.dataset.id)}/reboot`);
      return "Your desktop is rebooting.";
    },
    async ctrlAltDel(b) {
      await Console.api("POST", `/me/desktops/${encodeURIComponent(b.dataset.id)}/send-keys`,
        { keys: ["ctrl", "alt", "delete"] });
      return "Ctrl+Alt+Del sent to your desktop.";
    },
    async logoff(b) {
      await Console.api("POST", "/broker/logoff", { session_id: b.dataset.session });
      return "You are logged off.";
    },
    async extend(b) {
      const lease = await Console.api("POST", `/me/desktops/${encodeURIComponent(b.dataset.id)}/extend`);
      return `Your lease now ends at ${new Date(lease.lease_until).toLocaleString()}.`;
    },
    async reset(b) {
      if (!(await askReset(b.dataset.name))) return null;
      await Console.api("POST", `/me/desktops/${encodeURIComponent(b.dataset.id)}/reset`);
      return "Your desktop is being reset; Connect again for a clean one.";
    },
  };

  async function act(button) {
    button.disabled = true; button.setAttribute("aria-busy", "true");
    try {
      const said = await ACTIONS[button.dataset.action](button);
      if (said) { Console.notify(said); await refresh(); }
    } catch (error) {
      Console.notify(`${button.textContent} failed: ${error.message}`, "error");
    } finally {
      button.disabled = false; button.removeAttribute("aria-busy");
    }
  }

  async function savePreference(change) {
    try {
      await Console.api("PATCH", "/me/preferences", change);
      Console.notify("Saved.");
    } catch (error) {
      Console.notify(`Could not save: ${error.message}`, "error");
    }
  }

  Console.onReady(() => {
    const root = main();
    if (!root) return;
    root.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button || button.disabled) return;
      if (button.dataset.connectDesktop) connect({ desktop_id: button.dataset.connectDesktop }, button);
      else if (button.dataset.connectPool) {
        connect({ pool_id: button.dataset.connectPool, new_desktop: button.dataset.new === "1" }, button);
      } else if (button.dataset.action in ACTIONS) act(button);
    });
    root.querySelectorAll('input[name="console_client"]').forEach((radio) => radio.addEventListener("change", () => {
      if (radio.checked) savePreference({ console_client: radio.value });
    }));
    const auto = document.getElementById("auto-connect");
    if (auto) auto.addEventListener("change", () => savePreference({ auto_connect: auto.checked }));
    // Auto-connect once per visit of the tab (a reload does not download the file again).
    const only = root.dataset.autoConnect;
    if (only && !sessionStorage.getItem("portal-auto-connected")) {
      sessionStorage.setItem("portal-auto-connected", "1");
      connect({ desktop_id: only }, null);
    }
  });
})();
