"""Fixtures shared by the whole suite: real services (PostgreSQL, moto S3) and a real server per backend."""

from tests.services import *  # noqa: F403
from tests.serving import *  # noqa: F403
