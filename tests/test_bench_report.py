"""The bench's pure parts: its arguments, its percentiles and its tables (nothing here is timed)."""

from __future__ import annotations

import pytest

from bench.__main__ import FULL, QUICK, counts_for, fleet_row, parse_args, ratio_rows, section_lines
from bench.databases import shown, with_postgres_column
from bench.report import WIDTH, cell, percentile, summary_ms, table
from bench.slurm import ctld_times, latency_s, parse_jobcomp


def test_percentile_is_a_measured_value_by_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, in any order
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([0.3, 0.1, 0.2], 50) == 0.2
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_values_and_a_p_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summary_is_in_milliseconds() -> None:
    assert summary_ms([0.010, 0.030, 0.020]) == {"median_ms": 20.0, "p90_ms": 30.0, "best_ms": 10.0}


def test_cells_show_three_significant_figures() -> None:
    assert [cell(v) for v in (0.01234, 1.234, 12.34, 123.4, 12345.6, 0.0)] == [
        "0.0123",
        "1.23",
        "12.3",
        "123",
        "12,346",
        "0",
    ]
    assert [cell(v) for v in (None, True, 7, 10000, "x")] == ["-", "yes", "7", "10,000", "x"]


def test_table_aligns_numbers_right_and_text_left() -> None:
    lines = table([{"run": "a", "jobs": 1000, "p50_ms": 1.5}, {"run": "longer", "jobs": 5, "p50_ms": None}])
    assert lines == [
        "run      jobs  p50_ms",
        "------  -----  ------",
        "a       1,000    1.50",
        "longer      5       -",
    ]


def test_a_wide_table_is_cut_to_80_columns_in_its_text() -> None:
    rows = [{"run": "x" * 60, "note": "y" * 40, "jobs_per_s": 123.456, "p99_ms": 9.87}]
    lines = table(rows)
    assert max(len(line) for line in lines) <= WIDTH
    assert "123" in lines[2] and "9.87" in lines[2]  # numbers are never cut
    assert lines[2].startswith("x" * 10) and "~" in lines[2]


def test_no_rows_no_table() -> None:
    assert table([]) == []
    assert section_lines("a", {"status": "not run: no bench.scheduler", "rows": []}) == [
        "(a) scheduler alone: not run: no bench.scheduler",
        "",
    ]


def test_arguments_choose_sections_and_counts() -> None:
    args = parse_args(["--only", "c, A", "--quick", "--loop-jobs", "7"])
    assert args.only == "ac"
    counts = counts_for(args)
    assert counts.loop_jobs == 7
    assert counts.array_jobs == QUICK.array_jobs
    assert counts_for(parse_args([])) == FULL
    assert parse_args([]).only == "abcdef"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "a,z"], "unknown section 'z'"),
        (["--only", ","], "unknown section '(none)'"),
        (["--loop-jobs", "0"], "expected a positive whole number, got '0'"),
    ],
)
def test_bad_arguments_say_which_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_ratio_compares_the_workloads_both_ran() -> None:
    results: dict[str, dict[str, object]] = {
        "c": {
            "rows": [{"run": "gpuctl 1 host, loop", "jobs_per_s": 40.0}, {"run": "gpuctl 100 hosts, loop"}]
        },
        "d": {"rows": [{"run": "slurm 1 host, loop", "jobs_per_s": 4.0}, {"run": "slurm 1 host, array"}]},
    }
    assert ratio_rows(results) == [
        {"workload": "1 host, loop", "gpuctl_jobs_per_s": 40.0, "slurm_jobs_per_s": 4.0, "gpuctl/slurm": 10.0}
    ]
    assert ratio_rows({"c": results["c"]}) == []


# Lines as Slurm 22.05 (Debian 12) writes them: a plain job (1) and task 1 of array 4, whose own id is 5
CTLD_LOG = """\
[2026-11-29T09:46:47.751] _slurm_rpc_submit_batch_job: JobId=1 InitPrio=4294901759 usec=950
[2026-11-29T09:46:49.751] sched: Allocate JobId=1 NodeList=bench #CPUs=1 Partition=bench
[2026-11-29T09:46:49.915] _slurm_rpc_submit_batch_job: JobId=4 InitPrio=4294901756 usec=467
[2026-11-29T09:46:52.772] sched/backfill: _start_job: Started JobId=4_1(5) in bench on bench
"""
JOBCOMP = """\
JobId=1 UserId=root(0) JobState=COMPLETED StartTime=2026-11-29T09:46:49 EndTime=2026-11-29T09:46:49 \
SubmitTime=2026-11-29T09:46:47 ExitCode=0:0
JobId=5 UserId=root(0) JobState=COMPLETED StartTime=2026-11-29T09:46:52 EndTime=2026-11-29T09:46:52 \
SubmitTime=2026-11-29T09:46:49 ArrayJobId=4 ArrayTaskId=1 ExitCode=0:0
"""


def test_slurm_submit_to_running_comes_from_slurmctld_to_the_millisecond() -> None:
    records = parse_jobcomp(JOBCOMP)
    assert [(r["JobId"], r["JobState"], r.get("ArrayJobId")) for r in records] == [
        ("1", "COMPLETED", None),
        ("5", "COMPLETED", "4"),
    ]
    submitted, allocated = ctld_times(CTLD_LOG)
    assert [round(latency_s(r, submitted, allocated), 3) for r in records] == [2.0, 2.857]


def test_slurm_submit_to_running_falls_back_to_jobcomp_seconds() -> None:
    assert [latency_s(r, {}, {}) for r in parse_jobcomp(JOBCOMP)] == [2.0, 3.0]


def test_the_postgresql_column_joins_each_run_s_row() -> None:
    sqlite = [{"run": "gpuctl 1 host, loop", "jobs": 50, "jobs_per_s": 5.0, "p50_ms": 25.0, "p99_ms": 33.0}]
    postgres = [{"run": "gpuctl 1 host, loop", "jobs": 50, "jobs_per_s": 4.0, "p50_ms": 30.0, "failed": 1}]
    [row] = with_postgres_column(sqlite, postgres)
    assert (row["jobs_per_s"], row["pg_jobs_per_s"], row["pg_p50_ms"], row["pg_failed"]) == (
        5.0,
        4.0,
        30.0,
        1,
    )
    assert row["pg_p99_ms"] is None  # not measured there
    assert list(shown([row])[0]) == ["run", "jobs", "jobs/s", "p50", "p99", "pg jobs/s", "pg p50", "pg p99"]


def test_a_fleet_row_shows_postgresql_s_sync_figures_in_place_of_the_bring_up_s() -> None:
    row = {"agents": 1000, "up": 1000, "bringup_s": 5.0, "sync_p50_ms": 1.7, "heartbeats_per_s": 48.0}
    assert "up_s" in fleet_row(row) and "pg_p50" not in fleet_row(row)
    [both] = with_postgres_column([row], [{"agents": 1000, "sync_p50_ms": 2.0}], "agents", ("sync_p50_ms",))
    shown_row = fleet_row(both)
    assert shown_row["pg_p50"] == 2.0 and "up_s" not in shown_row
