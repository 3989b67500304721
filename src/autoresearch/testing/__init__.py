"""Test doubles that ship with autoresearch, so users can dry-run a setup offline.

`FakeOpenAIServer` and `FakeAnthropicServer` are real HTTP servers on 127.0.0.1 speaking each
API's wire format and answering from a script; `fake_agent_cli` is a coding-agent CLI that edits
files from a script (run it as `python -m autoresearch.testing.fake_agent_cli`).
"""

from __future__ import annotations

__all__ = ["FakeAnthropicServer", "FakeOpenAIServer", "load_script"]


def __getattr__(name: str):
    # Lazy, so that `python -m autoresearch.testing.fake_llm` does not import the module twice.
    if name in __all__:
        from . import fake_llm
        return getattr(fake_llm, name)
    raise AttributeError(f"module 'autoresearch.testing' has no attribute {name!r}")
