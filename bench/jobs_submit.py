"""``python -m bench.jobs_submit ADDRESS PATH``: one CreateJob streamed from a process of its own, as a real caller.

``bench.jobs`` runs the server in its own process; a caller streaming a 300 MB input from that same process
would share its GIL and cores' worth of Python with the server (reading the file, serialising 1 MiB messages),
and the bench would measure the two together. The spec comes on stdin (a serialised ``JobSpec``); prints one
JSON line: the job id and the wall-clock times (``time.time()``) the call began and returned.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from tensortrigger.v1 import jobs_service_pb2 as pb
from tensortrigger.v1 import jobs_service_pb2_grpc

CHUNK = 1 << 20


def requests(spec: pb.JobSpec, path: Path) -> Iterator[pb.CreateJobRequest]:
    yield pb.CreateJobRequest(spec=spec)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield pb.CreateJobRequest(chunk=chunk)


def main() -> None:
    address, path = sys.argv[1], Path(sys.argv[2])
    spec = pb.JobSpec.FromString(sys.stdin.buffer.read())
    with grpc.insecure_channel(address) as channel:
        stub = jobs_service_pb2_grpc.JobsServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)  # connected before the clock starts
        began = time.time()
        job = stub.CreateJob(requests(spec, path)).job
        returned = time.time()
    print(json.dumps({"id": job.id, "began": began, "returned": returned}))


if __name__ == "__main__":
    main()
