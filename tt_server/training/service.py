"""TrainingService: opens online-learning sessions and closes them all on shutdown.

``api/inference.py`` converts the Train stream's protobuf messages to ``TrainInput``s and each ``TrainEvent``
back; ``train`` relays a ``TrainingSession``'s events. The path of a checkpoint, in three hops:

    TrainingSession._checkpoint -> Registry.publish_trained -> MetadataStore.create_version (+ registry events)

``close()`` (called by the application before the gRPC server stops) makes every open session abort as its
``on_abort`` says and end with UNAVAILABLE, and waits for them to release their leases.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from tt_server.config import Settings
from tt_server.errors import ResourceExhausted, Unavailable
from tt_server.logs import served_model
from tt_server.registry.service import Registry
from tt_server.storage.blobs import BlobStore
from tt_server.storage.leases import LeaseManager
from tt_server.training.messages import TrainEvent, TrainInput
from tt_server.training.process import shared_training_process
from tt_server.training.session import SessionDeps, StopReason, TrainingSession

log = logging.getLogger(__name__)


class TrainingService:
    def __init__(self, registry: Registry, blobs: BlobStore, leases: LeaseManager, settings: Settings) -> None:
        self._process = (
            shared_training_process(settings.training_thread_nice, settings.log_level, settings.log_json)
            if settings.training_process
            else None
        )
        self._deps = SessionDeps(registry, blobs, leases, settings, self._process)
        self._settings = settings
        self._sessions: set[TrainingSession] = set()
        self._closing = False

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    async def train(self, requests: AsyncIterator[TrainInput]) -> AsyncIterator[TrainEvent]:
        """Run one session over ``requests`` (``TrainSpec`` first); yields its events, then raises whatever
        ended it abnormally. When the caller stops iterating (the client cancelled) the session aborts."""
        if self._closing:
            raise Unavailable("the server is shutting down")
        if len(self._sessions) >= self._settings.training_max_sessions:
            raise ResourceExhausted(
                f"{len(self._sessions)} training sessions are open, the most this server runs at once; retry later"
            )
        session = TrainingSession(uuid.uuid4().hex, requests, self._deps)
        self._sessions.add(session)
        session.start().add_done_callback(lambda _: self._sessions.discard(session))
        try:
            async for event in session.events:
                yield event
        finally:
            # For the access log, as inference names what it served: the session runs in a task of its own,
            # whose context the call's does not see.
            served_model.set(session.model)
            await session.stop(StopReason.CANCELLED)

    async def close(self) -> None:
        """Abort every open session (checkpointing per ``on_abort``) and wait until they have cleaned up."""
        self._closing = True
        sessions = list(self._sessions)
        if sessions:
            log.info("stopping training sessions", extra={"sessions": len(sessions)})
        await asyncio.gather(*(s.stop(StopReason.SHUTDOWN) for s in sessions))
