"""Job arrays as users see them: one submit for all the tasks, refs to an array or to one of its tasks
(`train`, `train[7]`, `3f2a91bc[7]`), one stop for them all, and one folded view with counts."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable

from coordinator.array_store import ArrayRow, ArrayStore
from coordinator.arrays import array_status
from coordinator.host_ops import Ambiguous, NotFound
from coordinator.settings import Settings
from coordinator.store import JobRow, Store
from shared import constants as C
from shared.arrays import parse_array
from shared.spec import TaskSpec, redacted
from shared.wire import ArraySummary, JobView

log = logging.getLogger("gpuctl.coordinator")
TASK_REF = re.compile(r"(.+)\[([0-9]{1,7})\]")  # ARRAY[INDEX]


class ArrayOps:
    """Part of the Coordinator: what it holds is declared here, set in its __init__."""

    store: Store
    arrays: ArrayStore
    settings: Settings

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        raise NotImplementedError

    def accepted_spec(self, spec: TaskSpec, project: str) -> TaskSpec:
        raise NotImplementedError

    def stop_jobs(self, jobs: list[JobRow]) -> None:
        raise NotImplementedError

    def job_view(self, job: JobRow) -> JobView:
        raise NotImplementedError

    def submit_array(self, spec: TaskSpec, array: str, project: str = "default", user: str = "") -> ArrayRow:
        """Accept one job per index of `array` (Slurm's syntax), submitted by `user`, all committed in one transaction before
        the answer, then run one scheduling pass for them all. SpecError naming `array` for a bad spec
        or one over the `max_array_tasks` setting."""
        spec = self.accepted_spec(spec, project)
        parsed = parse_array(array, self.settings.max_array_tasks)
        array_id, *task_ids = self._fresh_ids(1 + len(parsed.indices))
        row = ArrayRow(
            id=array_id,
            name=spec.name or f"array-{array_id[:4]}",
            project=project,
            indices=parsed.text,
            task_count=len(parsed.indices),
            min_index=parsed.indices[0],
            max_index=parsed.indices[-1],
            task_limit=parsed.limit,
            submitted_at=0.0,  # the store sets it
            spec=spec,
        )
        tasks = list(zip(task_ids, parsed.indices, strict=True))
        self.arrays.insert(row, tasks, "waiting for the scheduler", user)
        log.info("array %s submitted (%s[%s], %d tasks)", row.id, row.name, row.indices, row.task_count)
        self.kick(jobs=task_ids)  # committed: from here on, no failure may make the submit an error
        fresh = self.arrays.get(row.id)
        assert fresh is not None
        return fresh

    def _fresh_ids(self, count: int) -> list[str]:
        """`count` new ids, none naming a job or an array already."""
        ids: list[str] = []
        while len(ids) < count:
            candidates = list({secrets.token_hex(4) for _ in range(count - len(ids))} - set(ids))
            taken = self.arrays.ids_taken(candidates)
            ids += [c for c in candidates if c not in taken]
        return ids

    def find_target(self, ref: str, project: str | None = None) -> JobRow | ArrayRow:
        """A job, a whole array, or one task (`ARRAY[INDEX]`), by id, id prefix or name, as jobs are found:
        an exact id first, then the newest of that name, then a unique id prefix. Only among `project`'s
        if given: another project's array is not found."""
        task = TASK_REF.fullmatch(ref)
        if task is not None:
            try:
                array = self._one(self.arrays.find(task[1], project), [], task[1])
            except NotFound:
                array = None  # not an array's: perhaps a job named so
            if isinstance(array, ArrayRow):
                found = self.arrays.task(array.id, int(task[2]))
                if found is None:
                    raise NotFound(
                        f"array {array.id} ({array.name}) has no index {task[2]}; its indices: {array.indices}"
                    )
                return found
        return self._one(self.arrays.find(ref, project), self.store.find_jobs(ref, project), ref)

    @staticmethod
    def _one(arrays: list[ArrayRow], jobs: list[JobRow], ref: str) -> JobRow | ArrayRow:
        both: list[JobRow | ArrayRow] = [*arrays, *jobs]
        exact = [x for x in both if x.id == ref]
        if exact:
            return exact[0]
        named = [x for x in both if x.name == ref]
        if named:
            return max(named, key=lambda x: x.submitted_at)  # the newest of that name
        if len(both) > 1:
            raise Ambiguous(f"{ref!r} matches {len(both)} jobs: " + ", ".join(x.id for x in both[:5]))
        if not both:
            raise NotFound(f"no job {ref!r}")
        return both[0]

    def one_job(self, target: JobRow | ArrayRow) -> JobRow:
        """The job itself; an array is refused with the way to name one of its tasks."""
        if isinstance(target, ArrayRow):
            raise Ambiguous(
                f"{target.id} ({target.name}) is an array of {target.task_count} tasks, indices"
                f" {target.indices}: name one, as {target.name}[{target.min_index}]"
            )
        return target

    def stop_array(self, array: ArrayRow) -> None:
        """Ask every task of the array that has not ended to stop. Idempotent."""
        self.stop_jobs(self.arrays.tasks(array.id, include_finished=False))
        log.info("array %s stop requested", array.id)

    def view(self, target: JobRow | ArrayRow) -> JobView:
        return self.array_view(target) if isinstance(target, ArrayRow) else self.job_view(target)

    def array_view(self, array: ArrayRow) -> JobView:
        """The array folded into one view: its tasks counted by status, the first waiting one's reason."""
        counts = self.arrays.counts(array.id)
        return JobView(
            id=array.id,
            name=f"{array.name}[{array.indices}]",
            status=array_status(counts),
            reason=self.arrays.first_reason(array.id),
            priority=array.spec.priority,
            submitted_at=array.submitted_at,
            spec=redacted(array.spec),
            array=ArraySummary(
                indices=array.indices,
                task_count=array.task_count,
                task_limit=array.task_limit,
                counts=counts,
            ),
            service_path=f"{C.SERVICES_PREFIX}/{array.project}/{array.name}/" if array.spec.service else "",
        )

    def job_views(self, include_finished: bool, project: str | None) -> list[JobView]:
        """Jobs and arrays (each folded into one view), newest first."""
        jobs = self.store.list_jobs(include_finished, project=project, tasks=False)
        arrays = self.arrays.listing(include_finished, project)
        both: list[JobRow | ArrayRow] = [*jobs, *arrays]
        both.sort(key=lambda x: x.submitted_at, reverse=True)
        return [self.view(x) for x in both]

    def task_views(self, array: ArrayRow, include_finished: bool) -> list[JobView]:
        return [self.job_view(task) for task in self.arrays.tasks(array.id, include_finished)]
