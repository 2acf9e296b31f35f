"""The web console's pages as HTML text: views in, a page out. Pure.

Every value is escaped unless it is `Markup` (HTML this module built): job names, reasons, log lines and host
names come from users and agents, and a job named `<script>` must show as text. No inline script or style (the
Content-Security-Policy refuses both): the live parts are console.js, which reads the `data-` attributes here.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

from coordinator.accounts import Principal
from shared.describe import (
    ago,
    describe_gpus,
    describe_request,
    describe_unhealthy,
    index_ranges,
    job_status,
    range_text,
)
from shared.states import JobState
from shared.units import format_duration_s, format_mib
from shared.wire import AttemptView, HostView, JobView, QueueEntry

STATIC = "/ui/static"
STATE_CHOICES = ("", "all", *(s.value for s in JobState))  # "": the jobs still to finish, as `gpuctl ps`


class Markup(str):
    """HTML built here, inserted as is; any other str is escaped."""


def h(value: object) -> Markup:
    """`value` as HTML: Markup as it is, anything else escaped (quotes too: it may land in an attribute)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(h(p) for p in parts))


def tag(name: str, content: object = "", /, **attrs: object) -> Markup:
    """`<name attrs>content</name>`; `class_` is `class`; an attribute of None is left out."""
    text = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{h(value)}"'
        for key, value in attrs.items()
        if value is not None
    )
    return Markup(f"<{name}{text}>{h(content)}</{name}>")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> Markup:
    """A table in a box that scrolls sideways on a narrow window; `empty` shows when there are no rows."""
    body = join(tag("tr", join(tag("td", cell) for cell in row)) for row in rows)
    if not body:
        return tag("p", empty, class_="muted")
    head = tag("thead", tag("tr", join(tag("th", name) for name in headers)))
    return tag("div", tag("table", join((head, tag("tbody", body)))), class_="scroll")


def post_button(action: str, label: str, csrf: str, danger: bool = False) -> Markup:
    """One of the console's actions: a POST form carrying the session's CSRF token."""
    fields = join(
        (
            Markup(f'<input type="hidden" name="csrf" value="{h(csrf)}">'),
            tag("button", label, type="submit", class_="danger" if danger else None),
        )
    )
    return tag("form", fields, method="post", action=action, class_="inline")


def page(title: str, body: Markup, who: Principal | None = None, csrf: str = "") -> Markup:
    """The whole document: the header with the menu and who is logged in, then `body`."""
    head = Markup(
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        + (f'<meta name="gpuctl-csrf" content="{h(csrf)}">' if csrf else "")  # console.js sends it to the API
        + f'<link rel="stylesheet" href="{STATIC}/console.css"><script src="{STATIC}/console.js" defer></script>'
    )
    bar = tag("a", "gpuctl", href="/ui/jobs", class_="brand")
    if who is not None:
        menu = join(tag("a", name, href=f"/ui/{name.lower()}") for name in ("Jobs", "Queue", "Hosts"))
        role = who.role if who.project is None else f"{who.role} of {who.project}"
        user = join((tag("span", f"{who.name} ({role})"), post_button("/ui/logout", "Log out", csrf)))
        bar = join((bar, tag("nav", menu), tag("div", user, class_="who")))
    document = join(
        (
            tag("head", join((head, tag("title", f"{title} · gpuctl")))),
            tag("body", join((tag("header", bar), tag("main", join((tag("h1", title), body)))))),
        )
    )
    return Markup(f'<!doctype html><html lang="en">{document}</html>')


def login_page(problem: str = "") -> Markup:
    form = join(
        (
            tag("label", "API token", for_="token"),
            Markup(
                '<input id="token" name="token" type="password" autocomplete="off" required autofocus'
                ' placeholder="gpuctl_...">'
            ),
            tag("button", "Log in", type="submit"),
        )
    )
    hint = join(
        ("The token that ", tag("code", "gpuctl login"), " uses; an admin makes one with ")
        + (tag("code", "gpuctl user create"), ".")
    )
    parts = [tag("p", problem, class_="problem") if problem else "", tag("form", form, method="post")]
    return page("Log in", join((*parts, tag("p", hint, class_="muted"))))


def error_page(status: int, message: str, who: Principal | None, csrf: str) -> Markup:
    return page(f"{status}", tag("p", message, class_="problem"), who, csrf)


# --- jobs ----------------------------------------------------------------------------------------------------


def jobs_page(
    jobs: list[JobView], state: str, project: str, projects: list[str] | None, who: Principal, csrf: str
) -> Markup:
    """The jobs list with its filter; `projects`: the choice of project (None: the caller sees only its own)."""
    choices = [("", "unfinished"), ("all", "all"), *((s, s) for s in STATE_CHOICES[2:])]
    fields = [tag("label", "State", for_="state"), _select("state", choices, state)]
    if projects is not None:
        fields += [
            tag("label", "Project", for_="project"),
            _select("project", [("", "all"), *((p, p) for p in projects)], project),
        ]
    fields.append(tag("button", "Filter", type="submit"))
    rows = (
        (
            tag("a", job.id, href=f"/ui/jobs/{job.id}"),
            job.name,
            _status(job_status(job), job.status),
            index_ranges(job.gpus) or "-",
            job.host or "-",
            ago(job.submitted_at),
            job.reason,
        )
        for job in jobs
    )
    headers = ("ID", "Name", "Status", "GPUs", "Host", "Submitted", "Reason")
    listing = table(headers, rows, "No jobs here.")
    return page("Jobs", join((tag("form", join(fields), method="get", class_="filter"), listing)), who, csrf)


def job_page(job: JobView, log_offset: int | None, who: Principal, csrf: str) -> Markup:
    """A job's summary and attempts; `log_offset`: where its log tail starts (None: no log, an array)."""
    actions = (
        "" if JobState(job.status).terminal else post_button(f"/ui/jobs/{job.id}/stop", "Stop", csrf, True)
    )
    parts: list[object] = [
        tag("div", join((_status(job_status(job), job.status, "job-status"), actions)), class_="actions"),
        _facts(_job_facts(job)),
    ]
    if job.attempts:
        parts += [tag("h2", "Attempts"), _attempts(job.attempts)]
    if log_offset is not None:
        charts = tag("div", tag("p", "loading readings…", class_="muted"), id="gpu-charts", data_job=job.id)
        log = tag("pre", "", id="log", data_job=job.id, data_offset=log_offset)
        key = join(
            (tag("span", "utilization", class_="key util"), " ", tag("span", "memory", class_="key mem"))
        )
        legend = tag("p", join((key, " (percent)")), class_="legend muted", id="gpu-legend", hidden="")
        parts += [tag("h2", "GPUs"), legend, charts, tag("h2", "Log"), log]
    return page(f"{job.name} ({job.id})", join(parts), who, csrf)


def _job_facts(job: JobView) -> list[tuple[str, object]]:
    spec, res = job.spec, job.spec.resources
    facts: list[tuple[str, object]] = [("Reason", job.reason or "-")]  # "-": not shown (`_facts`)
    if job.array is not None:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(job.array.counts.items()))
        facts.append(("Tasks", f"{job.array.task_count} ({counts})"))
    facts += [
        ("Image", spec.image or "none (plain processes)"),
        ("Commands", Markup(Markup("<br>").join(h(c) for c in spec.commands)) or "-"),
        ("GPUs", describe_request(res.gpu)),
        ("CPU cores", range_text(res.cpu, lambda v: f"{v:g}") if res.cpu else "-"),
        ("Memory", range_text(res.memory_mib, lambda v: format_mib(int(v))) if res.memory_mib else "-"),
        ("Nodes", spec.nodes),
        ("Priority", job.priority),
        ("Max duration", format_duration_s(spec.max_duration_s) if spec.max_duration_s else "-"),
        ("Fleets", ", ".join(spec.fleets) or "any"),
    ]
    if job.host:
        facts.append(("Runs on", f"{job.host}, GPUs {index_ranges(job.gpus) or '-'}"))
    facts += [
        ("Submitted", _at(job.submitted_at)),
        ("Started", _at(job.started_at)),
        ("Finished", _at(job.finished_at)),
    ]
    if job.exit_code is not None:
        facts.append(("Exit code", job.exit_code))
    if job.estimated_start is not None:
        facts.append(("Estimated start", _at(job.estimated_start)))
    return facts


def _attempts(attempts: list[AttemptView]) -> Markup:
    rows = (
        (a.attempt, a.host, a.status, a.reason or "-", "-" if a.exit_code is None else a.exit_code)
        + (_at(a.started_at), _at(a.finished_at))
        for a in attempts
    )
    return table(("#", "Host", "Status", "Reason", "Exit", "Started", "Finished"), rows, "")


# --- hosts and the queue -------------------------------------------------------------------------------------


def hosts_page(hosts: list[HostView], busy: dict[str, set[int]], who: Principal, csrf: str) -> Markup:
    """Every host with its blocks (`busy`: by host id, the blocks that hold work) and its devices' health."""
    cards = join(_host_card(host, busy.get(host.id, set()), who.admin, csrf) for host in hosts)
    return page("Hosts", cards or tag("p", "No hosts have joined yet.", class_="muted"), who, csrf)


def _host_card(host: HostView, busy: set[int], admin: bool, csrf: str) -> Markup:
    inv = host.inventory
    title = join((tag("h2", host.name), _status(host.status, host.status)))
    facts = [
        f"{host.busy_blocks}/{host.total_blocks} blocks busy",
        describe_gpus(inv) if inv else "no inventory yet",
        host.transport or "-",
        f"seen {ago(host.last_seen)}",
    ]
    parts: list[object] = [tag("div", title, class_="card-head"), tag("p", " · ".join(facts), class_="muted")]
    if host.unhealthy:
        parts.append(tag("p", describe_unhealthy(host.unhealthy), class_="problem health"))
    parts += [tag("p", warning, class_="problem") for warning in host.warnings]
    if host.link_error:
        parts.append(tag("p", f"link failed {ago(host.link_error_at)}: {host.link_error}", class_="problem"))
    if inv is not None and inv.blocks:
        sick = {g.index for g in host.unhealthy}
        cells = (_block(b.index, b.gpus, b.index in busy, bool(sick & set(b.gpus))) for b in inv.blocks)
        parts.append(tag("div", join(cells), class_="blocks"))
    if admin and host.status in ("ready", "unreachable"):
        parts.append(post_button(f"/ui/hosts/{host.id}/drain", "Drain", csrf, True))
    return tag("section", join(parts), class_="card", id=f"host-{host.id}")


def _block(index: int, gpus: tuple[int, ...], busy: bool, sick: bool) -> Markup:
    what = f"block {index}: GPU {index_ranges(gpus)}" if gpus else f"block {index}"
    state = "unhealthy" if sick else "busy" if busy else "free"
    return tag("span", index, class_=f"block {state}", title=f"{what}, {state}")


def queue_page(entries: list[QueueEntry], who: Principal, csrf: str) -> Markup:
    rows = (
        (
            position,
            tag("a", e.id, href=f"/ui/jobs/{e.id}"),
            e.name,
            e.project,
            e.status,
            e.priority,
            f"{e.fair_share:.2f}",
            ago(e.submitted_at).removesuffix(" ago"),
            _at(e.estimated_start),
            e.reason,
        )
        for position, e in enumerate(entries, 1)
    )
    headers = (
        "#",
        "ID",
        "Name",
        "Project",
        "Status",
        "Priority",
        "Share",
        "Waiting",
        "Estimated start",
        "Reason",
    )
    return page("Queue", table(headers, rows, "Nothing waits."), who, csrf)


# --- small pieces --------------------------------------------------------------------------------------------


def _select(name: str, choices: list[tuple[str, str]], chosen: str) -> Markup:
    options = join(
        Markup(f'<option value="{h(value)}"{" selected" if value == chosen else ""}>{h(label)}</option>')
        for value, label in choices
    )
    return tag("select", options, name=name, id=name)


def _status(text: str, state: str, id_: str | None = None) -> Markup:
    return tag("span", text, class_=f"status s-{state}", id=id_)


def _facts(facts: list[tuple[str, object]]) -> Markup:
    """A definition list of the facts that have a value (`-`: none, left out: the page stays short)."""
    shown = ((name, value) for name, value in facts if value != "-")
    return tag("dl", join(join((tag("dt", name), tag("dd", value))) for name, value in shown), class_="facts")


def _at(ts: float | None) -> str:
    """`2026-11-29 14:05 UTC (3m ago)`, or `in 5m` for a time to come; `-` for none."""
    if ts is None:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    ahead_s = int(ts - time.time())
    return f"{text} (in {format_duration_s(ahead_s)})" if ahead_s > 0 else f"{text} ({ago(ts)})"
