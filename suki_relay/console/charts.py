"""The overview's charts, drawn on the server as SVG (no script, nothing external: within
the console's Content-Security-Policy): per hour over the last 24 hours, events accepted,
deliveries delivered and failed, requests refused, and delivery latency (received to
delivered) p50 and p95.

A bar is drawn only for an hour with something in it (class ``bar``), so the number of
bars says how many hours had any; each bar carries a <title> with its hour and value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from markupsafe import Markup, escape

from suki_relay.store.rows import Activity

HOURS = 24
WIDTH, HEIGHT, PAD, TOP = 480, 120, 24, 16  # PAD: below the bars (labels); TOP: above


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    svg: Markup
    total: str


def hour_of(ts: float, start: float) -> int | None:
    """The hour bucket (0 oldest .. HOURS-1 current) of a time, or None outside."""
    i = int((ts - start) // 3600)
    return i if 0 <= i < HOURS else None


def counts(times: Iterable[float], start: float) -> list[float]:
    out = [0.0] * HOURS
    for ts in times:
        i = hour_of(ts, start)
        if i is not None:
            out[i] += 1
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _label(hour_start: float) -> str:
    return time.strftime("%H:00", time.gmtime(hour_start))


def bars(series: list[tuple[str, str, list[float]]], start: float, unit: str,
         label: str) -> Markup:
    """A bar chart: one group of bars per hour, one bar per series (name, colour, values)."""
    top = max([v for _, _, values in series for v in values] + [0.0])
    scale = (HEIGHT - PAD - TOP) / top if top else 0.0
    slot = WIDTH / HOURS
    width = max(1.0, (slot - 2) / len(series))
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
             f'<line class="axis" x1="0" y1="{HEIGHT - PAD + 0.5}" x2="{WIDTH}" '
             f'y2="{HEIGHT - PAD + 0.5}" stroke="#8a8f98" stroke-width="1"/>']
    for i in range(HOURS):
        x0 = i * slot + 1
        for k, (name, colour, values) in enumerate(series):
            v = values[i]
            if not v:
                continue
            h = max(1.0, v * scale)
            shown = f"{v:g}" if unit == "" else f"{v:.2f} {unit}"
            parts.append(f'<rect class="bar bar-{escape(name)}" x="{x0 + k * width:.1f}" '
                         f'y="{HEIGHT - PAD - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{escape(name)} {_label(start + i * 3600)} '
                         f'UTC: {escape(shown)}</title></rect>')
    for i in range(0, HOURS, 6):
        parts.append(f'<text x="{i * slot + 1:.1f}" y="{HEIGHT - 6}" font-size="10" '
                     f'fill="#5b6270">{_label(start + i * 3600)}</text>')
    parts.append(f'<text x="{WIDTH - 2}" y="11" font-size="10" text-anchor="end" '
                 f'fill="#5b6270">max {top:g}{(" " + unit) if unit and top else ""}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def charts(activity: Activity, now: float | None = None) -> list[Chart]:
    """The overview's charts for the 24 hours up to ``now`` (the current hour last)."""
    now = time.time() if now is None else now
    start = (now // 3600 + 1) * 3600 - HOURS * 3600  # whole UTC hours, this one last
    accepted = counts(activity.accepted, start)
    delivered = counts((at for at, _ in activity.done), start)
    failed = counts(activity.failed, start)
    refused = [0.0] * HOURS
    for at, n in activity.refused:
        i = hour_of(at, start)
        if i is not None:
            refused[i] += n
    lags: list[list[float]] = [[] for _ in range(HOURS)]
    for at, received in activity.done:
        i = hour_of(at, start)
        if i is not None:
            lags[i].append(max(0.0, at - received))
    p50 = [percentile(v, 0.5) if v else 0.0 for v in lags]
    p95 = [percentile(v, 0.95) if v else 0.0 for v in lags]
    all_lags = [x for v in lags for x in v]
    return [
        Chart("Accepted", "events per hour", bars([("accepted", "#2f6fdb", accepted)], start, "",
                                                  "Events accepted per hour, last 24 hours"),
              f"{sum(accepted):g}"),
        Chart("Delivered and failed", "deliveries per hour",
              bars([("delivered", "#2e8540", delivered), ("failed", "#c62828", failed)], start,
                   "", "Deliveries delivered and failed per hour, last 24 hours"),
              f"{sum(delivered):g} delivered, {sum(failed):g} failed"),
        Chart("Refused", "requests per hour", bars([("refused", "#b35c00", refused)], start, "",
                                                   "Requests refused per hour, last 24 hours"),
              f"{sum(refused):g}"),
        Chart("Delivery latency", "received to delivered, seconds",
              bars([("p50", "#6a4fb3", p50), ("p95", "#c2a0ff", p95)], start, "s",
                   "Delivery latency p50 and p95 per hour, last 24 hours"),
              f"p50 {percentile(all_lags, 0.5):.2f} s, p95 {percentile(all_lags, 0.95):.2f} s"
              if all_lags else "-"),
    ]
