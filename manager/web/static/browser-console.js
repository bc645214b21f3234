// The browser console: noVNC's RFB (from the npm registry, served by the manager at /vendor/novnc/, docs/web.md)
// on the manager's WebSocket proxy (manager.console_proxy). The page never sees the guest's address, port or
// password: it holds a single-use ticket, from the portal's Connect (in the URL's #fragment, which no server
// log records) or asked for here through the API (a user's connect, or ?admin=1 an administrator's console).
import RFB from "/vendor/novnc/core/rfb.js";

const root = document.querySelector("main.browser-console");
const status = document.getElementById("console-status");
const screen = document.getElementById("screen");
const say = (text) => { status.textContent = text; };
let rfb = null;

async function ticket() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("ticket");
  if (given) {
    history.replaceState(null, "", location.pathname + location.search);  // single use: not kept in history
    return { ticket: given, ws_path: fragment.get("ws") || "/console/ws" };
  }
  const id = encodeURIComponent(root.dataset.desktop);
  return root.dataset.admin
    ? Console.api("POST", `/desktops/${id}/browser-console`)
    : Console.api("POST", "/broker/browser-console", { desktop_id: root.dataset.desktop });
}

async function open() {
  document.getElementById("reconnect").hidden = true;
  say("Connecting…");
  let answer;
  try {
    answer = await ticket();
  } catch (error) {
    say(`Could not open the console: ${error.message}`);
    document.getElementById("reconnect").hidden = false;
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}${answer.ws_path}?ticket=${encodeURIComponent(answer.ticket)}`;
  rfb = new RFB(screen, url, { shared: true });
  rfb.scaleViewport = document.getElementById("scale").checked;
  rfb.resizeSession = document.getElementById("resize").checked;
  rfb.focusOnClick = true;
  rfb.addEventListener("connect", () => {
    say("Connected");
    document.getElementById("cad").disabled = false;
    rfb.focus();
  });
  rfb.addEventListener("disconnect", (event) => {
    say(event.detail.clean ? "Disconnected" : "The console closed (the ticket was refused, the desktop stopped, "
      + "a time limit was reached or an administrator disconnected it)");
    document.getElementById("cad").disabled = true;
    document.getElementById("reconnect").hidden = false;
    rfb = null;
  });
  rfb.addEventListener("clipboard", (event) => {
    document.getElementById("clipboard-text").value = event.detail.text;
  });
  rfb.addEventListener("desktopname", (event) => { root.dataset.guestName = event.detail.name; });
}

document.getElementById("cad").addEventListener("click", () => { if (rfb) { rfb.sendCtrlAltDel(); rfb.focus(); } });
document.getElementById("fullscreen").addEventListener("click", () => {
  if (document.fullscreenElement) document.exitFullscreen();
  else screen.requestFullscreen().catch((error) => say(`Fullscreen refused: ${error.message}`));
});
document.getElementById("scale").addEventListener("change", (event) => {
  if (rfb) rfb.scaleViewport = event.target.checked;
});
document.getElementById("resize").addEventListener("change", (event) => {
  if (rfb) rfb.resizeSession = event.target.checked;
});
document.getElementById("clipboard-toggle").addEventListener("click", (event) => {
  const panel = document.getElementById("clipboard-panel");
  panel.hidden = !panel.hidden;
  event.target.setAttribute("aria-expanded", String(!panel.hidden));
});
document.getElementById("clipboard-send").addEventListener("click", () => {
  if (rfb) rfb.clipboardPasteFrom(document.getElementById("clipboard-text").value);
});
document.getElementById("reconnect").addEventListener("click", open);
open();
