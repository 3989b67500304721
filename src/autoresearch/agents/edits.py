"""The edit format of the LLM agents: a `Description:` line plus SEARCH/REPLACE or whole-file blocks.

A reply looks like this (the file path on the line before each block):

    Description: raise the learning rate to 0.04, the loss was still falling at the end

    train.py
    <<<<<<< SEARCH
    LEARNING_RATE = 0.02
    =======
    LEARNING_RATE = 0.04
    >>>>>>> REPLACE

or a whole file in a fenced block headed by its path. `parse_reply` reads the blocks;
`apply_edits` applies them to a dict of files and says, in words the model can act on, which
blocks did not match ("did you mean these lines: ...") and which paths it may not edit.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

FORMAT_INSTRUCTIONS = """\
Answer with exactly one proposal:

1. One line `Description: <what you change and why>` (one sentence, no line breaks).
2. The edits, as SEARCH/REPLACE blocks. Each block starts with the file path alone on a line:

train.py
<<<<<<< SEARCH
LEARNING_RATE = 0.02
=======
LEARNING_RATE = 0.04
>>>>>>> REPLACE

The SEARCH part must repeat existing lines of the file exactly (whitespace and comments
included), enough of them to be unique; it is replaced by the REPLACE part. Use several small
blocks rather than one large one. To rewrite a whole file instead, give its path on a line and
then its complete new contents in one fenced code block. Edit only the editable files shown;
make one coherent change that you expect to improve the metric.
"""

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\b.*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\b.*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})([^`]*)$")
_DESCRIPTION = re.compile(r"^\s*[*_#>\s]*description\s*[*_]*\s*:\s*[*_]*\s*(.+?)\s*$", re.IGNORECASE)
_PATHLIKE = re.compile(r"^[\w.\-/]+$")
_NOTE = re.compile(r"^\s*[*_#>\s-]*research note\s*[*_]*\s*:\s*[*_]*\s*(.+?)\s*$", re.IGNORECASE)

NOTES_HOW = ("To add to the research notes (they outlive this conversation: record what you "
             "learned, what to try next, what not to try again), put one or more lines "
             "`Research note: <text>` in your answer, outside the edit blocks.")


@dataclass
class Edit:
    """One block of a reply. `search` None means "the whole new file is `replace`"."""

    path: str
    search: str | None
    replace: str
    number: int = 0           # 1-based position in the reply, for messages


@dataclass
class ParsedReply:
    description: str | None
    edits: list[Edit]
    problems: list[str] = field(default_factory=list)   # malformed blocks, in words


@dataclass
class ApplyResult:
    """Files after applying what could be applied, and what could not."""

    files: dict[str, str]                 # every file, with the applied edits
    changed: set[str]                     # paths whose contents differ from the input
    failures: list[str]                   # one actionable message per failed block
    refused: list[str]                    # paths outside the editable set

    @property
    def ok(self) -> bool:
        return not self.failures and not self.refused


def find_description(text: str) -> str | None:
    """The text after the last `Description:` line, or None."""
    found = None
    for line in text.splitlines():
        m = _DESCRIPTION.match(line)
        if m and m.group(1).strip("*_` "):
            found = m.group(1).strip("*_` ")
    return found


def find_research_notes(text: str) -> str | None:
    """The text of every `Research note:` line, joined, or None."""
    found = [m.group(1).strip("*_` ") for line in text.splitlines() if (m := _NOTE.match(line))]
    found = [f for f in found if f]
    return " ".join(found) if found else None


def _clean_path(line: str) -> str | None:
    """The file path named on a header line (`train.py`, `**train.py**`, `# file: train.py`)."""
    s = line.strip().strip("`*#:'\"").strip()
    s = re.sub(r"^(file(name)?|path)\s*:\s*", "", s, flags=re.IGNORECASE).strip("`*'\" ")
    if s.startswith("./"):
        s = s[2:]
    if not s or not _PATHLIKE.match(s) or ("." not in s and "/" not in s):
        return None
    return s


def _header_path(lines: list[str], start: int) -> str | None:
    """The path on the nearest non-blank, non-fence line above index `start`."""
    i = start - 1
    while i >= 0 and (not lines[i].strip() or _FENCE.match(lines[i])):
        fence = _FENCE.match(lines[i])
        if fence and fence.group(2).strip():       # ```python train.py
            p = _clean_path(fence.group(2).split()[-1])
            if p:
                return p
        i -= 1
    return _clean_path(lines[i]) if i >= 0 else None


def _closes(line: str, ticks: str) -> bool:
    s = line.strip()
    return len(s) >= len(ticks) and set(s) == {ticks[0]}


def parse_reply(text: str) -> ParsedReply:
    """Read the description, SEARCH/REPLACE blocks and fenced whole-file blocks of a reply."""
    lines = text.splitlines()
    edits: list[Edit] = []
    problems: list[str] = []
    used = [False] * len(lines)
    last_path: str | None = None

    # SEARCH/REPLACE blocks first: they may sit inside fences, which must not count as files.
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        path = _header_path(lines, i) or last_path
        j = i + 1
        while j < len(lines) and not _DIVIDER.match(lines[j]) and not _SEARCH.match(lines[j]):
            j += 1
        k = j + 1
        while k < len(lines) and not _REPLACE.match(lines[k]) and not _SEARCH.match(lines[k]):
            k += 1
        number = len(edits) + len(problems) + 1
        if j >= len(lines) or not _DIVIDER.match(lines[j]) or k >= len(lines) or not _REPLACE.match(lines[k]):
            problems.append(f"block {number} is not closed: it needs a '=======' line and a "
                            f"'>>>>>>> REPLACE' line")
            i += 1
            continue
        if path is None:
            problems.append(f"block {number} has no file path on the line before '<<<<<<< SEARCH'")
        else:
            search = "\n".join(lines[i + 1:j])
            replace = "\n".join(lines[j + 1:k])
            edits.append(Edit(path, search + "\n" if search else "", replace + "\n" if replace else "",
                              number))
            last_path = path
        for n in range(i, k + 1):
            used[n] = True
        i = k + 1

    # Whole files: a path line, then a fenced block that holds no SEARCH/REPLACE markers.
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if used[i] or not fence:
            i += 1
            continue
        ticks = fence.group(1)
        end = i + 1
        while end < len(lines) and not _closes(lines[end], ticks):
            end += 1
        block_used = any(used[i:end + 1])
        path = _header_path(lines, i)
        if not block_used and path is not None and end < len(lines):
            body = "\n".join(lines[i + 1:end])
            edits.append(Edit(path, None, body + "\n" if body else "", len(edits) + 1))
        i = end + 1
    edits.sort(key=lambda e: e.number)
    return ParsedReply(find_description(text), edits, problems)


def _normal_path(path: str) -> str | None:
    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    if not p or p.startswith("/") or any(part in ("", "..") for part in p.split("/")):
        return None
    return p


def closest_lines(text: str, search: str, context: int = 0) -> str | None:
    """The run of lines in `text` most like `search`, for a "did you mean" message."""
    lines = text.splitlines()
    want = search.splitlines()
    if not lines or not want:
        return None
    n = len(want)
    best, best_at = 0.0, 0
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2("\n".join(want))
    for start in range(0, max(1, len(lines) - n + 1)):
        matcher.set_seq1("\n".join(lines[start:start + n]))
        if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
            continue
        r = matcher.ratio()
        if r > best:
            best, best_at = r, start
    if best < 0.5:
        return None
    lo, hi = max(0, best_at - context), min(len(lines), best_at + n + context)
    return "\n".join(lines[lo:hi])


def _replace_once(content: str, search: str, replace: str) -> str | None:
    if search in content:
        return content.replace(search, replace, 1)
    # Tolerate trailing whitespace differences, which models often get wrong.
    have = content.splitlines(keepends=True)
    want = [s.rstrip() for s in search.splitlines()]
    n = len(want)
    for start in range(0, len(have) - n + 1):
        if all(have[start + k].rstrip() == want[k] for k in range(n)):
            return "".join(have[:start]) + replace + "".join(have[start + n:])
    return None


def apply_edits(files: dict[str, str], edits: list[Edit],
                editable: Callable[[str], bool]) -> ApplyResult:
    """Apply `edits` to a copy of `files`; blocks that fail are reported, the rest applied."""
    out = dict(files)
    failures: list[str] = []
    refused: list[str] = []
    for e in edits:
        path = _normal_path(e.path)
        if path is None:
            failures.append(f"block {e.number}: '{e.path}' is not a path inside the target")
            continue
        if not editable(path):
            if path not in refused:
                refused.append(path)
            continue
        if e.search is None:
            out[path] = e.replace
            continue
        current = out.get(path)
        if not e.search.strip():
            if current is None or not current.strip():
                out[path] = e.replace
            else:
                failures.append(f"block {e.number}: the SEARCH part for {path} is empty; an empty "
                                f"SEARCH only creates a new file. Repeat the lines to replace.")
            continue
        if current is None:
            known = ", ".join(sorted(files)) or "none"
            failures.append(f"block {e.number}: there is no file {path}. Editable files: {known}")
            continue
        new = _replace_once(current, e.search, e.replace)
        if new is None:
            msg = (f"block {e.number}: the SEARCH part did not match any lines of {path} exactly.")
            near = closest_lines(current, e.search)
            if near is not None:
                msg += f" Did you mean these lines from {path}?\n```\n{near}\n```"
            failures.append(msg)
            continue
        out[path] = new
    changed = {p for p in out if out[p] != files.get(p)}
    return ApplyResult(out, changed, failures, refused)


def retry_message(result: ApplyResult, editable_files: list[str]) -> str:
    """The follow-up turn after a partly failed reply: what failed and how to fix it."""
    parts = []
    if result.failures:
        parts.append(f"{len(result.failures)} block(s) failed to apply:\n\n" + "\n\n".join(result.failures))
    if result.refused:
        parts.append("These files may not be edited: " + ", ".join(result.refused) +
                     ". You may edit only: " + (", ".join(editable_files) or "(none)"))
    if result.changed:
        parts.append("The other blocks applied. Send corrected blocks for the failed ones only; "
                     "do not repeat the blocks that applied.")
    else:
        parts.append("Nothing was applied. Send the whole proposal again with corrected blocks.")
    return "\n\n".join(parts)


def summarize_change(old: dict[str, str], new: dict[str, str], limit: int = 160) -> str:
    """A one-line description of a change from its diff, for agents that gave none."""
    pieces = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        if a is None:
            pieces.append(f"add {path}")
            continue
        if b is None:
            pieces.append(f"delete {path}")
            continue
        removed, added = [], []
        for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0):
            if line.startswith(("---", "+++", "@@")):
                continue
            (removed if line.startswith("-") else added).append(line[1:].strip())
        if 0 < len(removed) == len(added) <= 2:
            pieces.append(f"{path}: " + "; ".join(f"{r} -> {x}" for r, x in zip(removed, added, strict=True)))
        elif len(removed) + len(added) <= 2:
            pieces.append(f"{path}: " + " ".join([f"-{r}" for r in removed] + [f"+{x}" for x in added]))
        else:
            pieces.append(f"edit {path} (+{len(added)} -{len(removed)} lines)")
    text = "; ".join(pieces) or "no change"
    return text if len(text) <= limit else text[:limit - 3] + "..."
