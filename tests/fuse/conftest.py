"""Tiny models for fusion tests: the distill pair fixtures are reused."""

from tests.distill.conftest import distill_models  # noqa: F401
