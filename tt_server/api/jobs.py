"""JobsService: asynchronous batch jobs (implemented by a later issue; UNIMPLEMENTED until then)."""

from __future__ import annotations

from tensortrigger.v1 import jobs_service_pb2_grpc


class JobsServicer(jobs_service_pb2_grpc.JobsServiceServicer):
    pass
