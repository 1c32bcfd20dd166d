"""Reading a live server's /metrics in tests: samples by name and labels, and deltas between two scrapes."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(n == name and wanted <= ls for (n, ls) in self.samples)

    def label_values(self, label: str) -> set[str]:
        """Every value ``label`` takes in any sample."""
        return {v for (_, ls) in self.samples for k, v in ls if k == label}

    def names(self) -> set[str]:
        return {n for (n, _) in self.samples}


def parse(text: str) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(text, samples)


async def scrape(port: int, accept: str | None = None) -> Scrape:
    def get() -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return parse(text) if accept is None else Scrape(text, {})
