"""Fair share's usage read from a real store (coordinator/usage.py): a running allocation counts as it runs,
an ended one once, even when its end is stored after a look that came later than the time it records."""

from __future__ import annotations

import time
from pathlib import Path

from coordinator.queue_policy import decayed_gpu_hours
from coordinator.store import Store
from coordinator.usage import ProjectUsage
from shared.spec import parse_spec

HALF_LIFE_S = 7 * 86400.0


def allocation(store: Store, project: str, gpus: int, started_at: float) -> str:
    """A job of `project` whose allocation of `gpus` GPUs has run since `started_at`; answers its id."""
    store.db.execute(
        "INSERT INTO projects(name, created_at) VALUES (?, 0) ON CONFLICT DO NOTHING", (project,)
    )
    job = store.insert_job(f"j-{project}", project, parse_spec("commands: [train]\n"), "", project)
    store.ensure_host("h", "h")
    with store.tx() as db:
        store.insert_allocation(db, f"a-{project}", job.id, "h", (0,), tuple(range(gpus)), (0,), 1024)
        db.execute("UPDATE allocations SET started_at=? WHERE id=?", (started_at, f"a-{project}"))
    return f"a-{project}"


def end(store: Store, alloc_id: str, at: float) -> None:
    with store.tx() as db:
        db.execute("UPDATE allocations SET state='exited', finished_at=? WHERE id=?", (at, alloc_id))


def test_an_allocation_counts_while_it_runs_and_once_after_its_end_stored_late(database: Path | str) -> None:
    store = Store(database)
    now = time.time()
    research = allocation(store, "research", 8, now - 3600)
    allocation(store, "prod", 1, now - 3600)
    usage = ProjectUsage(store, HALF_LIFE_S)
    factors = usage.factors(now)
    assert factors["research"] < factors["prod"] < 1.0  # 8 GPU-hours against 1
    end(store, research, now + 10)
    usage.factors(now + 40)  # its end is seen
    end_late = allocation(store, "late", 2, now - 600)
    end(store, end_late, now + 30)  # stored after the look at now + 40, recording an earlier time
    for look in (now + 50, now + 60):  # each look after: counted once
        usage.factors(look)
        expected = decayed_gpu_hours(8, now - 3600, now + 10, look, HALF_LIFE_S)
        assert abs(usage.usage.ended["research"] - expected) < 1e-9
        late = decayed_gpu_hours(2, now - 600, now + 30, look, HALF_LIFE_S)
        assert abs(usage.usage.ended["late"] - late) < 1e-9
    store.close()
