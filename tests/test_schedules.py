"""Scheduled tasks (`schedule: {cron: ...}`): the cron arithmetic against a brute-force matcher, the spec's
one-line errors, and a real coordinator that runs each time once, restarts included.

The coordinator's tests pass `now` to `fire_schedules` (the housekeeping beat passes the clock): their cron
times lie months from today, so the real beat, running beside them, never finds one due.
"""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.api import ApiError
from coordinator.service import Coordinator
from shared.cron import cron_problem, latest_due, next_time
from shared.spec import Schedule, SpecError, parse_spec
from tests.harness import Cluster, cluster
from tests.test_arrays import cli
from tests.test_secrets import member

# --- the cron arithmetic -----------------------------------------------------------------------------


def _field_matches(field: str, value: int, low: int) -> bool:
    """One field of the grammar the strategy below writes: `*`, `*/s`, `a`, `a-b`, `a-b/s`, lists."""
    for part in field.split(","):
        spec, _, step = part.partition("/")
        if spec == "*":
            first, last = low, 10**6
        elif "-" in spec:
            first, last = map(int, spec.split("-"))
        else:
            first = last = int(spec)
        if first <= value <= last and (value - first) % int(step or 1) == 0:
            return True
    return False


def brute_day_matches(line: str, t: datetime) -> bool:
    """Vixie cron's rule, written out: day-of-month and day-of-week both restricted match when either does."""
    _, _, dom, month, dow = line.split()
    weekday = (t.weekday() + 1) % 7  # cron: 0 is Sunday
    days = _field_matches(dom, t.day, 1), _field_matches(dow, weekday, 0)
    day = (days[0] or days[1]) if "*" not in (dom[0], dow[0]) else (days[0] and days[1])
    return day and _field_matches(month, t.month, 1)


def brute_matches(line: str, t: datetime) -> bool:
    minute, hour = line.split()[:2]
    return (
        brute_day_matches(line, t) and _field_matches(minute, t.minute, 0) and _field_matches(hour, t.hour, 0)
    )


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    ranged = st.tuples(number, number).map(lambda p: f"{min(p)}-{max(p)}")
    one = st.one_of(st.just("*"), number.map(str), ranged)
    # cronsim reads a one-value range with a step (`5-5/2`) as `5/2`, from 5 to the field's end, where Vixie
    # cron reads 5: such a line is refused (see test_a_bad_line_names_its_field)
    wide = st.tuples(number, number).filter(lambda p: p[0] != p[1]).map(lambda p: f"{min(p)}-{max(p)}")
    stepped = st.tuples(st.sampled_from(["*", "r"]), wide, st.integers(1, 7)).map(
        lambda t: f"{t[0] if t[0] == '*' else t[1]}/{t[2]}"
    )
    part = st.one_of(one, stepped)
    return (
        st.lists(part, min_size=1, max_size=3).map(",".join).map(lambda f: "*" if "*" in f.split(",") else f)
    )


lines = st.tuples(_field(0, 59), _field(0, 23), _field(1, 28), _field(1, 12), _field(0, 6)).map(" ".join)
moments = st.datetimes(datetime(2026, 1, 1), datetime(2030, 12, 31)).map(lambda t: t.replace(tzinfo=UTC))


@settings(max_examples=60, deadline=None)
@given(st.lists(lines, min_size=1, max_size=2), moments)
def test_next_time_is_the_first_minute_a_brute_force_matcher_accepts(
    cron: list[str], start: datetime
) -> None:
    found = next_time(cron, start)
    t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while t < found:
        if not any(brute_day_matches(line, t) for line in cron):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)  # no minute of this day matches: skip it
            continue
        assert not any(brute_matches(line, t) for line in cron), (cron, t, found)
        t += timedelta(minutes=1)
    assert any(brute_matches(line, found) for line in cron), (cron, found)


@settings(max_examples=60, deadline=None)
@given(st.lists(lines, min_size=1, max_size=2), moments, st.integers(0, 5000))
def test_latest_due_is_the_last_matching_minute_of_the_window(
    cron: list[str], after: datetime, span_min: int
) -> None:
    now = after + timedelta(minutes=span_min, seconds=17)
    expected = None
    t = now.replace(second=0, microsecond=0)
    while t > after:
        if any(brute_matches(line, t) for line in cron):
            expected = t
            break
        t -= timedelta(minutes=1)
    assert latest_due(cron, after, now) == expected


def test_names_and_the_day_or_rule() -> None:
    start = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # a Sunday
    assert next_time(["0 9 * * mon-fri"], start) == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert next_time(["0 0 1 jan *"], start) == datetime(2027, 1, 1, tzinfo=UTC)
    # the 15th or any Monday, whichever comes first
    assert next_time(["0 0 15 * mon"], start) == datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("61 * * * *", "bad minute field '61'"),
        ("* 25 * * *", "bad hour field '25'"),
        ("* * 32 * *", "bad day-of-month field '32'"),
        ("* * * foo *", "bad month field 'foo'"),
        ("* * * * 8", "bad day-of-week field '8'"),
        ("* * * *", "expected 5 fields"),
        ("0 * * * * *", "expected 5 fields"),  # no seconds field
        ("0 0 1,5-5/2 * *", "bad day-of-month field '1,5-5/2'"),  # cronsim would read it as 5/2
    ],
)
def test_a_bad_line_names_its_field(line: str, problem: str) -> None:
    found = cron_problem(line)
    assert found is not None and found.startswith(problem), found


# --- the spec ----------------------------------------------------------------------------------------


def test_schedule_takes_one_line_or_a_list() -> None:
    one = parse_spec("commands: [x]\nschedule: {cron: '15 23 * * *'}\n")
    assert one.schedule == Schedule(cron=("15 23 * * *",))
    several = parse_spec(
        "commands: [x]\nschedule:\n  cron:\n    - '0 6 * * mon-fri'\n    - '0 10 * * sat,sun'\n"
    )
    assert several.schedule == Schedule(cron=("0 6 * * mon-fri", "0 10 * * sat,sun"))


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("{cron: '0 25 * * *'}", "t.yaml:2: schedule.cron[0]: bad hour field '25'"),
        ("{cron: ['0 * * * *', '* * *']}", "t.yaml:2: schedule.cron[1]: expected 5 fields"),
        (
            "\n  cron:\n    - '0 * * * *'\n    - '0 0 * 13 *'",
            "t.yaml:5: schedule.cron[1]: bad month field '13'",
        ),
        ("{cron: []}", "t.yaml:2: schedule.cron: must name at least one cron line"),
        ("{crom: '0 * * * *'}", "t.yaml:2: schedule.crom: unknown field; did you mean 'cron'?"),
        ("'0 * * * *'", "t.yaml:2: schedule: expected a mapping"),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_field(schedule: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(f"commands: [x]\nschedule: {schedule}\n", source="t.yaml")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value), caught.value


# --- a real coordinator ------------------------------------------------------------------------------


def far_month() -> tuple[int, datetime]:
    """A month six from now, and midnight on its 1st (UTC): no real beat reaches it during a test."""
    today = datetime.now(UTC)
    month = (today.month + 5) % 12 + 1
    return month, datetime(today.year + (month < today.month), month, 1, tzinfo=UTC)


def spec_text(month: int, name: str = "nightly") -> str:
    return f"name: {name}\ncommands: [echo hi]\nschedule:\n  cron: ['0 0 1 {month} *', '30 12 1 {month} *']\n"


def coordinator(c: Cluster) -> Coordinator:
    return c.coordinator.coordinator


def at(t: datetime, **delta: float) -> float:
    return (t + timedelta(**delta)).timestamp()


async def restart(c: Cluster) -> None:
    """Stop the coordinator and start another on the same state and port."""
    await c.restart_coordinator()


async def test_each_time_runs_once_across_a_restart_and_ps_shows_the_next_run(tmp_path: Path) -> None:
    month, first = far_month()
    async with cluster() as c:  # no agent: each run stays pending
        schedule = await c.submit(spec_text(month))
        assert (schedule.status, schedule.schedule is not None) == ("scheduled", True)
        assert schedule.schedule is not None and schedule.schedule.next_run_at == first.timestamp()
        assert [v.id for v in await asyncio.to_thread(c.api.jobs, True)] == [schedule.id]  # no job yet
        with pytest.raises(ApiError) as caught:
            await asyncio.to_thread(c.api.logs, "nightly", 0, False)
        assert f"has not run yet; next run {first:%Y-%m-%d} 00:00 UTC" in str(caught.value)
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "ps")
        assert code == 0 and f"next run {first:%Y-%m-%d} 00:00 UTC" in " ".join(out.split()), out

        assert coordinator(c).fire_schedules(now=at(first, seconds=-1)) == []
        [run] = coordinator(c).fire_schedules(now=at(first, seconds=3))
        view = await c.job(run)
        assert view.name == f"nightly@{first:%Y-%m-%dT%H:%M}" and view.spec.schedule is None
        await asyncio.to_thread(
            c.api.stop, run
        )  # ended: only the handled time can keep it from running again
        assert coordinator(c).fire_schedules(now=at(first, seconds=4)) == []
        await restart(c)  # between a fire and the next beat
        assert coordinator(c).fire_schedules(now=at(first, seconds=5)) == []
        again = await c.job("nightly")  # by name: the schedule
        assert again.schedule is not None and again.schedule.next_run_at == at(first, hours=12, minutes=30)
        assert again.schedule.runs == 1

        [second] = coordinator(c).fire_schedules(now=at(first, hours=12, minutes=30, seconds=2))
        # the second run has not ended (no host): the next time is skipped, and says so
        assert coordinator(c).fire_schedules(now=at(first.replace(year=first.year + 1), seconds=2)) == []
        skipped = await c.job("nightly")
        assert skipped.schedule is not None and skipped.schedule.last_note.startswith(
            f"skipped {first.year + 1}-{month:02d}-01T00:00: its run {second}"
        )
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "ps")
        assert code == 0 and f"next run {first.year + 1}-{month:02d}-01 12:30 UTC" in " ".join(out.split()), (
            out
        )


async def test_a_stale_read_of_a_schedule_runs_nothing() -> None:
    """Two passes that read the same row (or a stop between the read and the write): the store decides."""
    month, first = far_month()
    async with cluster() as c:
        schedule = await c.submit(spec_text(month))
        schedules = coordinator(c).schedules
        [read] = schedules.due(at(first, seconds=1))
        assert schedules.run(read, first.timestamp(), at(first, hours=12, minutes=30), "aaaa0001", "a")
        assert not schedules.run(read, first.timestamp(), at(first, hours=12, minutes=30), "aaaa0002", "b")
        [again] = schedules.due(at(first, hours=13))
        await asyncio.to_thread(c.api.stop, schedule.id)
        assert not schedules.run(again, at(first, hours=12, minutes=30), at(first, days=365), "aaaa0003", "c")
        assert [run.id for run in schedules.runs(schedule.id)] == ["aaaa0001"]


async def test_a_coordinator_down_over_several_times_runs_once_for_the_latest() -> None:
    month, first = far_month()
    async with cluster() as c:
        await c.submit(spec_text(month))
        # down from before the first time to past the first two of them, over a year
        [run] = coordinator(c).fire_schedules(now=at(first, days=366, hours=13))
        view = await c.job(run)
        assert view.name == f"nightly@{first.year + 1}-{month:02d}-01T12:30"


async def test_stop_ends_the_schedule_and_its_run(tmp_path: Path) -> None:
    month, first = far_month()
    async with cluster() as c:
        task = tmp_path / "nightly.yaml"
        task.write_text(spec_text(month))
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "submit", "-f", str(task))
        assert code == 0 and f"(nightly): next run {first:%Y-%m-%d} 00:00 UTC" in out, out  # and returns
        schedule = await c.job("nightly")
        [run] = coordinator(c).fire_schedules(now=at(first, seconds=1))
        stopped = await asyncio.to_thread(c.api.stop, "nightly")
        assert stopped.status == "stopped" and stopped.schedule is not None
        assert stopped.schedule.next_run_at is None
        assert (await c.job(run)).status == "stopped"
        assert coordinator(c).fire_schedules(now=at(first, days=400)) == []
        assert schedule.id not in [v.id for v in await asyncio.to_thread(c.api.jobs, False)]
        assert schedule.id in [v.id for v in await asyncio.to_thread(c.api.jobs, True)]


async def test_a_schedule_and_its_runs_belong_to_its_project() -> None:
    month, first = far_month()
    async with cluster() as c:
        alice, bob = await member(c, "team-a"), await member(c, "team-b")
        spec = parse_spec(spec_text(month))
        schedule = await asyncio.to_thread(alice.submit, spec)
        [run] = coordinator(c).fire_schedules(now=at(first, seconds=1))
        assert {v.id for v in await asyncio.to_thread(alice.jobs, True)} == {schedule.id, run}
        assert await asyncio.to_thread(bob.jobs, True) == []
        with pytest.raises(ApiError) as caught:
            await asyncio.to_thread(bob.stop, "nightly")
        assert "no job 'nightly'" in str(caught.value)


async def test_a_bad_cron_line_is_refused_by_the_cli_and_by_the_server(tmp_path: Path) -> None:
    async with cluster() as c:
        task = tmp_path / "task.yaml"
        task.write_text("commands: [x]\nschedule: {cron: '0 0 * * 9'}\n")
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "submit", "-d", "-f", str(task))
        assert code != 0 and "schedule.cron[0]: bad day-of-week field '9'" in out, out
        assert "Traceback" not in out
        # a client that skips the parser: the coordinator checks the same rules
        spec = msgspec.structs.replace(parse_spec("commands: [x]"), schedule=Schedule(cron=("0 0 * * 9",)))
        with pytest.raises(ApiError) as caught:
            await asyncio.to_thread(c.api.submit, spec)
        assert "schedule.cron[0]: bad day-of-week field '9'" in str(caught.value)
        with pytest.raises(ApiError) as caught:
            await asyncio.to_thread(c.api.submit_array, parse_spec(spec_text(1)), "1-3")
        assert "schedule: an array cannot be scheduled" in str(caught.value)
        assert await asyncio.to_thread(c.api.jobs, True) == []


async def test_the_files_a_schedule_will_hand_to_its_runs_are_kept() -> None:
    month, first = far_month()
    async with cluster() as c:
        archive = await asyncio.to_thread(c.api.upload_files, gzip.compress(b"for every run"))
        spec = msgspec.structs.replace(parse_spec(spec_text(month)), files_archive=archive)
        schedule = await c.submit_spec(spec)
        [run] = coordinator(c).fire_schedules(now=at(first, seconds=1))
        await asyncio.to_thread(c.api.stop, run)
        later = at(datetime.now(UTC), days=30)  # past any grace period
        assert coordinator(c).prune_files(now=later) == []
        await asyncio.to_thread(c.api.stop, schedule.id)
        assert coordinator(c).prune_files(now=later) == [archive]


async def test_the_housekeeping_beat_runs_a_due_schedule_on_an_agent() -> None:
    async with cluster() as c:
        c.start_agent("cron-host", "1xL4")
        spec = parse_spec("name: beat\ncommands: [echo ran-by-schedule]\nschedule: {cron: '* * * * *'}\n")
        # submitted "two minutes ago": a time is due, and the next beat (within 5 s) runs it
        schedule = coordinator(c).submit_schedule(spec, now=at(datetime.now(UTC), minutes=-2))
        async with asyncio.timeout(30):
            while not (runs := coordinator(c).schedules.runs(schedule.id)):  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the beat's own pace: nothing here to wait on
        assert len(runs) == 1  # the times it slept over run once
        assert (await c.full_log("beat")).decode() == "ran-by-schedule\n"  # the schedule: its latest run
