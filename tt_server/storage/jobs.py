"""JobStore: batch job rows, the source of truth for every job (the broker only carries job ids).

Leases make "exactly-once results" out of at-least-once delivery. ``lease_job`` atomically starts a new
attempt (its number is a fencing token) when the job is QUEUED or RUNNING under an expired lease. Every later
write by that attempt (progress, commit, fail, release) names the attempt and succeeds only while the job is
still RUNNING under it, so once another attempt has taken over, or the job was cancelled, the old one's
writes return False and change nothing. Implemented once in SQL (``sql_jobs.py``) for both databases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tt_server.types import Job, JobState, Page, RowError

MAX_ROW_ERRORS = 100  # the sample of malformed rows kept per job


@dataclass(frozen=True, slots=True)
class JobProgress:
    """What a running attempt reports; written periodically and with its final state."""

    rows_done: int = 0
    rows_skipped: int = 0
    row_errors: tuple[RowError, ...] = ()
    rows_total: int = 0  # 0 until known: the whole input was read, or its metadata says (Parquet)
    timings: dict[str, float] = field(default_factory=dict)
    rows_total_estimate: int = 0  # while rows_total is 0: rows read scaled by the share of bytes read
    rows_per_second: float = 0.0
    eta_seconds: float = 0.0


class JobStore(Protocol):
    async def create_job(self, job: Job, owns_input: bool) -> Job:
        """Insert a QUEUED job. ``owns_input``: the input blob was written for this job, so its blob GC entry
        (recorded before the upload) is cleared in the same transaction."""

    async def get_job(self, job_id: str) -> Job:
        """Raises ``NotFound``."""

    async def list_jobs(
        self, model_name: str | None, state: JobState | None, page_size: int, page_token: str
    ) -> Page[Job]:
        """Newest first; the page token is bound to the filters."""

    async def lease_job(self, job_id: str, owner: str, ttl_seconds: float) -> int | None:
        """Start a new attempt if the job is QUEUED, or RUNNING with an expired lease: returns the attempt
        number, or None when the job is held by a live lease, finished, or unknown. Resets the progress."""

    async def renew_job_lease(self, job_id: str, attempt: int, ttl_seconds: float) -> bool: ...

    async def update_job_progress(self, job_id: str, attempt: int, progress: JobProgress, ttl_seconds: float) -> bool:
        """Record progress and renew the lease; False when ``attempt`` no longer holds the job."""

    async def commit_job(
        self, job_id: str, attempt: int, result_key: str, result_size: int, progress: JobProgress
    ) -> bool:
        """SUCCEEDED with this result, only if ``attempt`` still holds the job; clears the result's blob GC
        entry in the same transaction."""

    async def fail_job(self, job_id: str, attempt: int, error: str, progress: JobProgress) -> bool:
        """FAILED, only if ``attempt`` still holds the job."""

    async def release_job(self, job_id: str, attempt: int, error: str, charge: bool) -> bool:
        """Back to QUEUED for another attempt, only if ``attempt`` still holds the job. ``charge`` False
        (a clean shutdown) gives the attempt back to the retry budget; ``error`` says why, for retries."""

    async def give_up_job(self, job_id: str, max_attempts: int, error: str) -> bool:
        """FAILED if the job could be leased but has used ``max_attempts`` attempts; False otherwise."""

    async def cancel_job(self, job_id: str) -> Job:
        """CANCELLED unless finished (``FailedPrecondition``); unknown jobs raise ``NotFound``."""

    async def abandon_job(self, job_id: str, error: str) -> bool:
        """FAILED if still QUEUED and never attempted (publishing its message failed)."""

    async def stale_jobs(self, idle_seconds: float, limit: int) -> list[str]:
        """Claim unfinished jobs nobody has touched for ``idle_seconds`` (QUEUED and not updated, or RUNNING
        with a lease expired that long ago), marking them touched, so that each is republished once."""

    async def unfinished_jobs(self, limit: int) -> list[str]:
        """Ids of QUEUED and RUNNING jobs, oldest first."""

    # The blob GC outbox of the metadata store (same database): job inputs and results are recorded there
    # before they are written, and claimed by the job row in the same transaction that records them.
    async def add_blob_gc(self, blob_key: str, not_before_us: int) -> None: ...

    async def remove_blob_gc(self, blob_key: str) -> None: ...
