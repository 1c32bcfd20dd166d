"""The JobStore in SQL, for both databases: a sibling of ``SqlMetadataStore`` over the same ``SqlBackend``.

Every state change is one conditional ``UPDATE ... WHERE`` (plus ``RETURNING``): the condition is the rule.
On PostgreSQL, at READ COMMITTED, two racing updates of one row serialise on its row lock and the second
re-checks its WHERE against the first's result, so two workers can never both lease one attempt; SQLite runs
one writer at a time anyway. Times come from the caller's clock (workers are expected to run NTP).
"""

from __future__ import annotations

import json
from typing import Any

from tt_server.errors import FailedPrecondition, NotFound
from tt_server.storage.jobs import MAX_ROW_ERRORS, JobProgress
from tt_server.storage.sqldb import Row, SqlStore, clamp_page_size, from_us, now_us, us
from tt_server.types import CsvOptions, InputFormat, Job, JobSpec, JobState, ModelRef, OutputFormat, Page, RowError

_JOB_COLUMNS = (
    "id, model_name, model_version, spec, state, rows_done, rows_total, rows_skipped, row_errors, attempts, "
    "attempt, lease_owner, lease_until, input_blob_key, input_size, result_blob_key, result_size, error, "
    "timings, created_at, started_at, ended_at"
)
# A job a new attempt may take: waiting, or running under a lease that has run out ($3 is "now").
_LEASABLE = "(state = 'QUEUED' OR (state = 'RUNNING' AND lease_until < $3))"
# The job is still held by the attempt in $2.
_HELD = "id = $1 AND attempt = $2 AND state = 'RUNNING'"


class SqlJobStore(SqlStore):
    """A ``JobStore`` over any ``SqlBackend`` (see the module docstring for the rules)."""

    async def create_job(self, job: Job, owns_input: bool) -> Job:
        now = now_us()
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO jobs (id, model_name, model_version, spec, state, input_blob_key, input_size, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                job.id,
                job.model_name,
                job.model_version,
                json.dumps(spec_to_json(job.spec), sort_keys=True),
                JobState.QUEUED.value,
                job.input_blob_key,
                job.input_size,
                now,
            )
            if owns_input:
                await tx.execute("DELETE FROM blob_gc WHERE blob_key = $1", job.input_blob_key)
        return await self.get_job(job.id)

    async def get_job(self, job_id: str) -> Job:
        row = await self._db.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        return _job_from_row(row)

    async def list_jobs(
        self, model_name: str | None, state: JobState | None, page_size: int, page_token: str
    ) -> Page[Job]:
        size = clamp_page_size(page_size)
        # The filters are part of the listing's name, so a token cannot be replayed under other filters.
        listing = f"jobs/{model_name or ''}/{state.value if state else ''}"
        conditions: list[str] = []
        args: list[object] = []

        def where(sql: str, *values: object) -> None:
            for value in values:
                args.append(value)
                sql = sql.replace("?", f"${len(args)}", 1)
            conditions.append(sql)

        if model_name:
            where("model_name = ?", model_name)
        if state is not None:
            where("state = ?", state.value)
        if page_token:
            created, _, last_id = str(self._tokens.decode(page_token, listing)).partition(":")
            where("(created_at < ? OR (created_at = ? AND id < ?))", int(created), int(created), last_id)
        clause = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        args.append(size + 1)
        rows = await self._db.fetch(
            f"SELECT {_JOB_COLUMNS} FROM jobs {clause}ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", *args
        )
        page = rows[:size]
        token = ""
        if len(rows) > size:
            token = self._tokens.encode(listing, f"{page[-1]['created_at']}:{page[-1]['id']}")
        return Page([_job_from_row(row) for row in page], token)

    async def lease_job(self, job_id: str, owner: str, ttl_seconds: float) -> int | None:
        now = now_us()
        row = await self._db.fetchrow(
            "UPDATE jobs SET state = 'RUNNING', attempt = attempt + 1, attempts = attempts + 1, lease_owner = $2, "
            "lease_until = $4, started_at = COALESCE(started_at, $3), updated_at = $3, rows_done = 0, "
            "rows_total = 0, rows_skipped = 0, row_errors = '[]', timings = '{}' "
            f"WHERE id = $1 AND {_LEASABLE} RETURNING attempt",
            job_id,
            owner,
            now,
            now + us(ttl_seconds),
        )
        return None if row is None else int(row["attempt"])

    async def renew_job_lease(self, job_id: str, attempt: int, ttl_seconds: float) -> bool:
        now = now_us()
        return await self._held_update("lease_until = $3, updated_at = $4", job_id, attempt, now + us(ttl_seconds), now)

    async def update_job_progress(self, job_id: str, attempt: int, progress: JobProgress, ttl_seconds: float) -> bool:
        now = now_us()
        return await self._held_update(
            "rows_done = $3, rows_skipped = $4, row_errors = $5, lease_until = $6, updated_at = $7, "
            "rows_total = $8, timings = $9",
            job_id,
            attempt,
            progress.rows_done,
            progress.rows_skipped,
            _row_errors_json(progress.row_errors),
            now + us(ttl_seconds),
            now,
            progress.rows_total,
            _timings_json(progress),
        )

    async def commit_job(
        self, job_id: str, attempt: int, result_key: str, result_size: int, progress: JobProgress
    ) -> bool:
        now = now_us()
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE jobs SET state = 'SUCCEEDED', result_blob_key = $3, result_size = $4, rows_done = $5, "
                "rows_skipped = $6, row_errors = $7, rows_total = $8, timings = $9, error = '', ended_at = $10, "
                f"updated_at = $10, lease_owner = NULL, lease_until = NULL WHERE {_HELD} RETURNING id",
                job_id,
                attempt,
                result_key,
                result_size,
                progress.rows_done,
                progress.rows_skipped,
                _row_errors_json(progress.row_errors),
                progress.rows_total,
                _timings_json(progress),
                now,
            )
            if row is None:
                return False
            # The result was recorded for collection before it was written; now a job claims it.
            await tx.execute("DELETE FROM blob_gc WHERE blob_key = $1", result_key)
        return True

    async def fail_job(self, job_id: str, attempt: int, error: str, progress: JobProgress) -> bool:
        now = now_us()
        return await self._held_update(
            "state = 'FAILED', error = $3, rows_done = $4, rows_skipped = $5, row_errors = $6, timings = $7, "
            "ended_at = $8, updated_at = $8, lease_owner = NULL, lease_until = NULL",
            job_id,
            attempt,
            error,
            progress.rows_done,
            progress.rows_skipped,
            _row_errors_json(progress.row_errors),
            _timings_json(progress),
            now,
        )

    async def release_job(self, job_id: str, attempt: int, error: str, charge: bool) -> bool:
        return await self._held_update(
            "state = 'QUEUED', error = $3, attempts = attempts - $4, updated_at = $5, lease_owner = NULL, "
            "lease_until = NULL",
            job_id,
            attempt,
            error,
            0 if charge else 1,
            now_us(),
        )

    async def give_up_job(self, job_id: str, max_attempts: int, error: str) -> bool:
        now = now_us()
        row = await self._db.fetchrow(
            "UPDATE jobs SET state = 'FAILED', error = $2, ended_at = $3, updated_at = $3, lease_owner = NULL, "
            f"lease_until = NULL WHERE id = $1 AND attempts >= $4 AND {_LEASABLE} RETURNING id",
            job_id,
            error,
            now,
            max_attempts,
        )
        return row is not None

    async def cancel_job(self, job_id: str) -> Job:
        now = now_us()
        row = await self._db.fetchrow(
            "UPDATE jobs SET state = 'CANCELLED', ended_at = $2, updated_at = $2, lease_owner = NULL, "
            "lease_until = NULL WHERE id = $1 AND state IN ('QUEUED', 'RUNNING') RETURNING id",
            job_id,
            now,
        )
        job = await self.get_job(job_id)
        if row is None:
            raise FailedPrecondition(f"job {job_id!r} is already {job.state.value}")
        return job

    async def abandon_job(self, job_id: str, error: str) -> bool:
        now = now_us()
        row = await self._db.fetchrow(
            "UPDATE jobs SET state = 'FAILED', error = $2, ended_at = $3, updated_at = $3 "
            "WHERE id = $1 AND state = 'QUEUED' AND attempt = 0 RETURNING id",
            job_id,
            error,
            now,
        )
        return row is not None

    async def stale_jobs(self, idle_seconds: float, limit: int) -> list[str]:
        now = now_us()
        before = now - us(idle_seconds)
        # One statement claims and touches, so two sweepers never both republish a job in one round.
        rows = await self._db.fetch(
            "UPDATE jobs SET updated_at = $1 WHERE id IN (SELECT id FROM jobs WHERE "
            "updated_at < $2 AND (state = 'QUEUED' OR (state = 'RUNNING' AND lease_until < $2)) "
            "ORDER BY created_at LIMIT $3) RETURNING id",
            now,
            before,
            limit,
        )
        return [row["id"] for row in rows]

    async def unfinished_jobs(self, limit: int) -> list[str]:
        rows = await self._db.fetch(
            "SELECT id FROM jobs WHERE state IN ('QUEUED', 'RUNNING') ORDER BY created_at, id LIMIT $1", limit
        )
        return [row["id"] for row in rows]

    async def _held_update(self, assignments: str, job_id: str, attempt: int, *args: object) -> bool:
        """Apply ``assignments`` (whose parameters start at $3) if ``attempt`` still holds the job."""
        row = await self._db.fetchrow(
            f"UPDATE jobs SET {assignments} WHERE {_HELD} RETURNING id", job_id, attempt, *args
        )
        return row is not None


# --- (de)serialisation --------------------------------------------------------------------------------------
def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    csv = spec.csv
    return {
        "model": {"name": spec.model.name, "version": spec.model.version, "label": spec.model.label},
        "csv": {
            "has_header": csv.has_header,
            "delimiter": csv.delimiter,
            "feature_columns": list(csv.feature_columns),
            "feature_column_indices": list(csv.feature_column_indices),
            "passthrough_columns": list(csv.passthrough_columns),
        },
        "output_format": spec.output_format.value,
        "skip_bad_rows": spec.skip_bad_rows,
        "input_blob_key": spec.input_blob_key,
        "annotations": dict(spec.annotations),
        "input_uri": spec.input_uri,
        "output_uri": spec.output_uri,
        "input_format": spec.input_format.value,
    }


def spec_from_json(data: dict[str, Any]) -> JobSpec:
    model, csv = data["model"], data["csv"]
    return JobSpec(
        model=ModelRef(model["name"], version=model["version"], label=model["label"]),
        csv=CsvOptions(
            has_header=csv["has_header"],
            delimiter=csv["delimiter"],
            feature_columns=tuple(csv["feature_columns"]),
            feature_column_indices=tuple(csv["feature_column_indices"]),
            passthrough_columns=tuple(csv["passthrough_columns"]),
        ),
        output_format=OutputFormat(data["output_format"]),
        skip_bad_rows=data["skip_bad_rows"],
        input_blob_key=data["input_blob_key"],
        annotations=data["annotations"],
        input_uri=data.get("input_uri", ""),  # absent in rows written before they existed
        output_uri=data.get("output_uri", ""),
        input_format=InputFormat(data.get("input_format", "csv")),
    )


# The running attempt's rate, estimated total and ETA travel in the ``timings`` JSON column under these keys
# (no schema change: the column already holds the attempt's per-stage figures).
_RATE, _ESTIMATE, _ETA = "progress.rows_per_second", "progress.rows_total_estimate", "progress.eta_seconds"


def _timings_json(progress: JobProgress) -> str:
    stats = dict(progress.timings)
    if progress.rows_per_second:
        stats[_RATE] = round(progress.rows_per_second, 1)
    if progress.rows_total_estimate:
        stats[_ESTIMATE] = progress.rows_total_estimate
    if progress.eta_seconds:
        stats[_ETA] = round(progress.eta_seconds, 2)
    return json.dumps(stats, sort_keys=True)


def _row_errors_json(errors: tuple[RowError, ...]) -> str:
    return json.dumps([[e.row, e.reason] for e in errors[:MAX_ROW_ERRORS]])


def _job_from_row(row: Row) -> Job:
    stats = json.loads(row["timings"])
    return Job(
        id=row["id"],
        model_name=row["model_name"],
        model_version=row["model_version"],
        spec=spec_from_json(json.loads(row["spec"])),
        state=JobState(row["state"]),
        input_blob_key=row["input_blob_key"],
        input_size=row["input_size"],
        created_at=from_us(row["created_at"]),
        rows_done=row["rows_done"],
        rows_total=row["rows_total"],
        rows_skipped=row["rows_skipped"],
        row_errors=tuple(RowError(r, reason) for r, reason in json.loads(row["row_errors"])),
        attempts=row["attempts"],
        attempt=row["attempt"],
        lease_owner=row["lease_owner"],
        lease_until_us=row["lease_until"],
        error=row["error"],
        result_blob_key=row["result_blob_key"],
        result_size=row["result_size"],
        timings={k: v for k, v in stats.items() if not k.startswith("progress.")},
        rows_total_estimate=int(stats.get(_ESTIMATE, 0)),
        rows_per_second=float(stats.get(_RATE, 0.0)),
        eta_seconds=float(stats.get(_ETA, 0.0)),
        started_at=None if row["started_at"] is None else from_us(row["started_at"]),
        ended_at=None if row["ended_at"] is None else from_us(row["ended_at"]),
    )
