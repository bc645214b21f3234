"""The planner's report (docs/planner.md "Report"): an HTML page with PNG figures as in the paper - operation counts,
response time per operation, the iteration-overlap timeline per desktop, QoS p95 against users with the threshold
lines, host CPU and memory during the run. Pure: it takes a run as exported (planner.results.run_export's shape) and
returns the page and the figures; the manager serves them (GET /api/v1/planner/runs/{id}/report) and the planner's
commands write them to a directory."""
from __future__ import annotations

import html
import io
from collections import Counter, defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on a server
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = ("operations", "response_times", "timeline", "qos", "host")
TITLES = {
    "operations": "Operations measured, by operation",
    "response_times": "Response time per operation",
    "timeline": "Iterations over time, per desktop",
    "qos": "QoS: Group A and B p95 against users",
    "host": "Host CPU and memory during the run",
}


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=90)
    plt.close(fig)
    return out.getvalue()


def _operations(samples: list[dict]) -> bytes:
    ok = Counter(f"{s['app']}-{s['operation']}" for s in samples if s["ok"])
    failed = Counter(f"{s['app']}-{s['operation']}" for s in samples if not s["ok"])
    labels = sorted(set(ok) | set(failed))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(labels, [ok[k] for k in labels], label="measured")
    ax.bar(labels, [failed[k] for k in labels], bottom=[ok[k] for k in labels], label="failed (after retries)")
    ax.set_ylabel("operations")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    return _png(fig)


def _response_times(samples: list[dict]) -> bytes:
    labels = sorted({f"{s['app']}-{s['operation']}" for s in samples})
    guest = [[s["guest_s"] for s in samples if f"{s['app']}-{s['operation']}" == k and s["guest_s"] is not None]
             for k in labels]
    client = [[s["client_s"] for s in samples if f"{s['app']}-{s['operation']}" == k and s["client_s"] is not None]
              for k in labels]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    positions = range(len(labels))
    if any(guest):
        ax.boxplot([g or [float("nan")] for g in guest], positions=[p - 0.18 for p in positions], widths=0.3,
                   patch_artist=True, boxprops={"facecolor": "#9ecae1"})
    if any(client):
        ax.boxplot([c or [float("nan")] for c in client], positions=[p + 0.18 for p in positions], widths=0.3,
                   patch_artist=True, boxprops={"facecolor": "#fdae6b"})
    ax.set_xticks(list(positions), labels, rotation=30)
    ax.set_ylabel("seconds (blue: guest, orange: client watermarks)")
    return _png(fig)


def _timeline(samples: list[dict]) -> bytes:
    desktops = sorted({s["desktop"] for s in samples})
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(1, len(desktops))))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, desktop in enumerate(desktops):
        for s in samples:
            if s["desktop"] != desktop:
                continue
            length = s["client_s"] if s["client_s"] is not None else (s["guest_s"] or 0.05)
            ax.broken_barh([(s["started_s"], max(length, 0.05))], (row - 0.35, 0.7),
                           facecolors=colours[s["iteration"] % len(colours)],
                           edgecolors="red" if not s["ok"] else "none")
    ax.set_yticks(range(len(desktops)), desktops)
    ax.set_xlabel("seconds since the run started (colour: iteration; red edge: failed)")
    return _png(fig)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _qos(runs: list[dict], threshold_a: float, threshold_b: float) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    users = [r["users"] for r in runs]
    ax.plot(users, [_nan(r["group_a_p95_s"]) for r in runs], "o-", label="Group A p95")
    ax.plot(users, [_nan(r["group_b_p95_s"]) for r in runs], "s-", label="Group B p95")
    ax.axhline(threshold_a, color="C0", linestyle="--", label=f"threshold A {threshold_a:g} s")
    if threshold_b != threshold_a:
        ax.axhline(threshold_b, color="C1", linestyle=":", label=f"threshold B {threshold_b:g} s")
    ax.set_xlabel("users (desktops)")
    ax.set_ylabel("seconds")
    ax.legend()
    return _png(fig)


def _host(host_stats: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3))
    by_host: dict[str, list[dict]] = defaultdict(list)
    for point in host_stats:
        by_host[point.get("host", "host")].append(point)
    for host, points in sorted(by_host.items()):
        ax.plot([p["t"] for p in points], [p["cpu"] for p in points], label=f"{host} CPU %")
        ax.plot([p["t"] for p in points], [p["mem"] for p in points], linestyle="--", label=f"{host} memory %")
    ax.set_ylim(0, 100)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("%")
    if by_host:
        ax.legend(fontsize="small")
    return _png(fig)


def figures(run: dict) -> dict[str, bytes]:
    """The report's PNG figures by name (FIGURES)."""
    samples = run["samples"]
    summary = run.get("summary", {})
    scores = summary.get("scores") or {"runs": [], "threshold_a_s": 1.5, "threshold_b_s": 1.5}
    return {
        "operations": _operations(samples),
        "response_times": _response_times(samples),
        "timeline": _timeline(samples),
        "qos": _qos(scores["runs"], scores["threshold_a_s"], scores["threshold_b_s"]),
        "host": _host(summary.get("host_stats", [])),
    }


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cell = lambda v: html.escape("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    return ("<table><thead><tr>" + "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in head) + "</tr></thead>"
            "<tbody>" + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
            + "</tbody></table>")


def _dig(value: Any, *keys: str) -> str:
    """value[k1][k2]... as text, "" where a level is missing or not a mapping (a profile is free-form JSON)."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def render_html(run: dict, figure_src: dict[str, str]) -> str:
    """The report page; `figure_src` maps each figure's name to its <img src> (a file name or a URL)."""
    summary = run.get("summary", {})
    scores = summary.get("scores") or {}
    profile = run.get("profile", {})
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Planner run {e(run.get('name') or run['id'])}</title>",
        "<style>body{font-family:sans-serif;max-width:60rem;margin:1rem auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>Planner run {e(run.get('name') or run['id'])}</h1>",
        "<dl>",
        f"<dt>Score</dt><dd>{e(str(scores.get('score', '-')))} (definition: {e(str(scores.get('definition', 'run')))}; "
        f"p95 by nearest rank; thresholds A {e(str(scores.get('threshold_a_s', '-')))} s, "
        f"B {e(str(scores.get('threshold_b_s', '-')))} s)</dd>",
        f"<dt>Mode</dt><dd>{e(run.get('mode', ''))}</dd>",
        f"<dt>Users</dt><dd>{e(str(run.get('users', '')))}</dd>",
        f"<dt>Workload</dt><dd>{e(_dig(profile, 'workload', 'name'))}, mix {e(_dig(profile, 'workload', 'mix'))}, "
        f"think time {e(_dig(profile, 'workload', 'think_time_s'))} s, iterations "
        f"{e(_dig(profile, 'workload', 'iterations'))}, seed {e(_dig(profile, 'workload', 'seed'))}</dd>",
        f"<dt>Login VSI baseline</dt><dd>{e(str(scores.get('vsi_baseline_s')))} s</dd>",
        f"<dt>Watermark vs guest, median</dt><dd>{e(str(summary.get('watermark_vs_guest_median_ms')))} ms</dd>",
        f"<dt>Flagged desktops</dt><dd>{e(', '.join(summary.get('flagged', {})) or 'none')}</dd>",
        f"<dt>Stopped by the watchdog</dt><dd>{e(', '.join(summary.get('watchdog', [])) or 'none')}</dd>",
        "</dl>",
        "<h2>Runs</h2>",
        _table([[r["users"], r["group_a_p95_s"], r["group_b_p95_s"], "passed" if r["passed"] else "failed"]
                for r in scores.get("runs", [])], ["users", "Group A p95 (s)", "Group B p95 (s)", "QoS"]),
    ]
    admin = summary.get("admin", {})
    if admin:
        parts += ["<h2>Admin operations</h2>",
                  _table([[k, v.get("count"), v.get("seconds"), v.get("rate_per_s"), v.get("errors")]
                          for k, v in admin.items()], ["operation", "count", "seconds", "rate (1/s)", "errors"])]
    for name in FIGURES:
        parts.append(f"<h2>{e(TITLES[name])}</h2><img src='{e(figure_src[name])}' alt='{e(TITLES[name])}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: dict, directory: Any) -> str:
    """Write report.html and its PNG figures into `directory` (a pathlib.Path); returns the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, png in figures(run).items():
        (directory / f"{name}.png").write_bytes(png)
    page = directory / "report.html"
    page.write_text(render_html(run, {name: f"{name}.png" for name in FIGURES}), encoding="utf-8")
    return str(page)
