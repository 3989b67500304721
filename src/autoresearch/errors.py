"""The exception family of autoresearch.

    AutoresearchError            a user-facing problem: one line that names the file, key or value
    ├── ConfigError              autoresearch.toml is missing, malformed or invalid
    ├── GitError                 not a git repository, or a git command failed
    ├── LedgerError              the ledger cannot be opened or is inconsistent
    └── AgentConfigError         an --agent spec that cannot be built (unknown name, missing SDK)

The CLI catches only AutoresearchError and prints its message as one red line (exit 1, no
traceback). Expected experiment outcomes (crash, timeout, invalid proposal) are never exceptions:
they are statuses recorded in the ledger.
"""

from __future__ import annotations


class AutoresearchError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(AutoresearchError):
    pass


class GitError(AutoresearchError):
    pass


class LedgerError(AutoresearchError):
    pass


class AgentConfigError(AutoresearchError):
    pass
