"""`greedy`: the original autoresearch rule.

Keep a candidate when its single measurement is strictly better than the best; on an exactly
equal metric keep it when it has fewer lines of code (the simplicity criterion of program.md).
"""

from __future__ import annotations

from .base import Decision, Policy, PolicyContext, Sample, Verdict


class GreedyPolicy(Policy):
    name = "greedy"

    def decide(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> Decision:
        c, b = candidate.values[-1], incumbent.mean
        better = c < b if ctx.direction == "minimize" else c > b
        evidence = {"candidate": c, "best": b, "lines": candidate.lines,
                    "best_lines": incumbent.lines}
        if better:
            return Decision(Verdict.KEEP, f"{c:.6g} beats best {b:.6g}", evidence=evidence)
        if c == b and candidate.lines < incumbent.lines:
            return Decision(Verdict.KEEP,
                            f"equal metric with fewer lines ({candidate.lines} < {incumbent.lines})",
                            evidence=evidence)
        return Decision(Verdict.DISCARD, f"{c:.6g} does not beat best {b:.6g}", evidence=evidence)
