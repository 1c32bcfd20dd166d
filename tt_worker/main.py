"""``tt-worker`` / ``python -m tt_worker``: a job worker process for the production mode (RabbitMQ).

Reads the same ``TT_*`` settings as the server (database, blob store, ``TT_AMQP_URL``), consumes job ids and
runs each job with the shared ``JobRunner`` (``tt_server/jobs/runner.py``). SIGTERM or SIGINT: running jobs
are released at their next batch and their messages requeued, then the process exits; a second signal exits
at once (the lease then runs out and another worker takes over). Logs are JSON lines unless TT_LOG_JSON=false.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from tt_server import metrics
from tt_server.config import Settings
from tt_server.jobs.objects import JobBlobs
from tt_server.jobs.runner import JobRunner, worker_id
from tt_server.jobs.worker import JobWorker, worker_model_cache
from tt_server.logs import configure_logging
from tt_server.runtime.manager import ModelManager
from tt_server.storage.factory import (
    make_blob_store,
    make_broker,
    make_job_store,
    make_metadata_store,
    make_object_buckets,
)

log = logging.getLogger("tt_worker")


async def run(settings: Settings) -> int:
    if not settings.amqp_url:
        log.error("TT_AMQP_URL is not set: without RabbitMQ the server runs jobs itself (embedded mode)")
        return 2
    owner = worker_id()
    metadata = make_metadata_store(settings)
    blobs = make_blob_store(settings)
    broker = make_broker(settings, connection_name=f"tt-worker {owner}")
    await metadata.open()
    await blobs.open()
    await broker.open()
    job_blobs = JobBlobs(blobs, make_object_buckets(settings))  # inputs and results callers name as s3:// URIs
    await job_blobs.open()
    models = ModelManager(metadata, blobs, worker_model_cache(settings), settings)
    store = make_job_store(metadata)
    runner = JobRunner(store, job_blobs, models, settings, owner=owner, concurrency=settings.worker_prefetch)
    worker = JobWorker(runner, broker, store, settings, concurrency=settings.worker_prefetch)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        if stopping:
            sys.exit(1)  # second signal: stop now; leases run out and messages are redelivered
        stopping.append(asyncio.create_task(worker.stop(settings.shutdown_grace_seconds)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    metrics_server = metrics.serve(settings.metrics_address)[0] if settings.metrics_address else None
    log.info("worker started", extra={"owner": owner, "queue": settings.amqp_jobs_queue})
    try:
        await worker.run()
        if stopping:
            await stopping[0]
    finally:
        await broker.close()
        await models.close()
        runner.close()
        await job_blobs.close()
        await blobs.close()
        await metadata.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    log.info("worker stopped", extra={"owner": owner})
    return 0


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
