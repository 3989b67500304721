"""autoresearch: autonomous research loops on any git repository with a metric.

An agent proposes a change to the editable files, a locked evaluator measures it under a fixed
time budget, and only real improvements are kept, as git commits. Everything tried is recorded.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Target, TargetSpec, load_target
from .errors import AgentConfigError, AutoresearchError, ConfigError, GitError, LedgerError
from .experiment import HistoryEntry, Outcome, Proposal, Status, Usage

__all__ = [
    "__version__",
    "AgentConfigError",
    "AutoresearchError",
    "ConfigError",
    "GitError",
    "HistoryEntry",
    "LedgerError",
    "Outcome",
    "Proposal",
    "Status",
    "Target",
    "TargetSpec",
    "Usage",
    "load_target",
]
