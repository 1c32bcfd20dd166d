"""``tt-worker`` / ``python -m tt_worker``: a job worker process for the production mode (RabbitMQ).

Reads the same ``TT_*`` settings as the server (database, blob store, ``TT_AMQP_URL``), consumes job ids and
runs each job with the shared ``JobRunner`` (``tt_server/jobs/runner.py``). SIGTERM or SIGINT: running jobs
are released at their next batch and their messages requeued, then the process exits; a second signal exits
at once (the lease then runs out and another worker takes over). Logs are JSON lines unless TT_LOG_JSON=false.

``tt-worker --help`` lists every setting; a bad one exits 2 with one line, a failed start-up exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from tt_server.cli import WORKER_FLAGS, parse_settings, stores_in_use, warn_unknown_variables
from tt_server.config import Settings
from tt_server.logs import configure_process_logging, exit_now, log_startup_failure

log = logging.getLogger("tt_worker")

DESCRIPTION = (
    "Tensor Trigger job worker: consumes job ids from RabbitMQ (TT_AMQP_URL) and runs the batch jobs, with the "
    "same metadata and blob settings as the servers. SIGTERM hands running jobs back to the queue."
)


async def run(settings: Settings) -> int:
    # Imported here, after the settings were checked: this is where TensorFlow is loaded.
    from tt_server import metrics
    from tt_server.events import LocalEventBus
    from tt_server.jobs.objects import JobBlobs
    from tt_server.jobs.runner import JobRunner, worker_id
    from tt_server.jobs.worker import JobWorker, worker_model_cache
    from tt_server.runtime.loader import loader_factory
    from tt_server.runtime.manager import ModelManager
    from tt_server.storage.factory import close_quietly, enter, make_object_buckets, open_stores

    owner = worker_id()
    # Whatever start-up opened is closed in reverse order, also when a later step fails.
    async with contextlib.AsyncExitStack() as opened:
        try:
            # The same stores as the server's (one root: storage.factory.open_stores), but no registry events:
            # the worker's model manager resolves versions through the metadata store.
            stores = await opened.enter_async_context(
                open_stores(settings, broker_name=f"tt-worker {owner}", events=LocalEventBus())
            )
            job_blobs = JobBlobs(stores.blobs, make_object_buckets(settings))  # inputs and results as s3:// URIs
            await enter(opened, job_blobs, "job object storage")
            models = ModelManager(
                stores.metadata,
                stores.blobs,
                worker_model_cache(settings),
                settings,
                loader_factory=loader_factory(settings),
            )
            opened.push_async_callback(close_quietly, models.close, "model manager")
            runner = JobRunner(
                stores.jobs, job_blobs, models, settings, owner=owner, concurrency=settings.worker_prefetch
            )
            opened.callback(runner.close)
            worker = JobWorker(runner, stores.broker, stores.jobs, settings, concurrency=settings.worker_prefetch)
            if settings.metrics_address:
                metrics.serve(settings.metrics_address, opened)
        except Exception as e:
            log_startup_failure(log, e)
            return 1
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def on_signal(signum: int) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            if stopping:
                sys.exit(1)  # second signal: stop now; leases run out and messages are redelivered
            stopping.append(asyncio.create_task(worker.stop(settings.shutdown_grace_seconds)))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        log.info(
            "worker started",
            extra={
                "owner": owner,
                "queue": settings.amqp_jobs_queue,
                "metrics_address": settings.metrics_address or None,
                **stores_in_use(settings),
            },
        )
        await worker.run()
        if stopping:
            await stopping[0]
    log.info("worker stopped", extra={"owner": owner})
    return 0


def main(argv: list[str] | None = None) -> None:
    settings, _ = parse_settings("tt-worker", DESCRIPTION, WORKER_FLAGS, argv)
    if not settings.amqp_url:
        print(
            "tt-worker: invalid setting TT_AMQP_URL: must be set (without RabbitMQ the server runs jobs itself, in "
            "embedded mode)",
            file=sys.stderr,
        )
        sys.exit(2)
    configure_process_logging(settings.log_level, settings.log_json, settings.log_repeat_interval_seconds)
    warn_unknown_variables(log)
    exit_now(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
