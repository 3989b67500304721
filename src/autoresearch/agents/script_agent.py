"""`script:PATH`: replays proposals from a JSON Lines file, one per line.

    {"description": "...", "files": {"train.py": "<full new content>"}}
    {"description": "...", "patch": "<unified diff>"}
    {"description": "...", "files": {...}, "notes": "a line for the research notes"}

When the file runs out the run ends cleanly. After a restart it resumes at the next line.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..experiment import HistoryEntry, Proposal
from .base import Agent, AgentContext, ProposalsExhausted


class ScriptAgent(Agent):
    """`script:PATH`: replays proposals from a JSON Lines file, one per line."""

    name = "script"
    concurrent = True

    def __init__(self, path: str, done: int = 0):
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--agent script:{path}: no such file — give the path of a JSON Lines file")
        self.path = p
        self.items: list[dict] = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{p}:{n}: not valid JSON ({e.msg}) — one proposal object per line") from None
            if not isinstance(item, dict) or not ("files" in item or "patch" in item):
                raise ConfigError(f"{p}:{n}: a proposal needs \"files\" or \"patch\" "
                                  f"(and a \"description\")")
            self.items.append(item)
        self.next = done

    def resume(self, history: list[HistoryEntry]) -> None:
        self.next = sum(1 for h in history if h.params and "script_line" in h.params
                        and h.candidate_of is None)   # a rebase copies its candidate's params

    def propose(self, context: AgentContext) -> Proposal:
        if self.next >= len(self.items):
            raise ProposalsExhausted(f"{self.path} has no more proposals")
        item = self.items[self.next]
        self.next += 1
        return Proposal(description=item.get("description", f"{self.path.name} line {self.next}"),
                        files=item.get("files"), patch=item.get("patch"),
                        params={"script_line": self.next}, notes_entry=item.get("notes"))
