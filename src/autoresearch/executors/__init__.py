"""Executors by name: `local` slots (default) and `ray`."""

from __future__ import annotations

from .base import Executor, SlotInfo
from .local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "SlotInfo"]
