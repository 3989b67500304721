"""Acceptance policies, by name.

- `noise-aware` (the default, policies/posterior.py): keeps what is really better, deciding on
  a posterior over the candidate's effect with a prior learned from the run's own history,
  judged against the best as measured now, with the noise where the comparison is made;
- `noise-aware-v2` (policies/sequential.py): the same guards with a fixed sequential test;
- `greedy` (policies/greedy.py): the original's one-run rule;
- `noise-aware-v1` (policies/noise_aware.py): the first statistical policy, kept for comparison.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import Decision, Estimate, FirstRun, Policy, PolicyContext, Sample, SeededGroup, Verdict
from .greedy import GreedyPolicy

DEFAULT_POLICY = "noise-aware"


def make_policy(name: str) -> Policy:
    # only the chosen policy's module is imported: the statistical ones load numpy and scipy
    # (~65 MB of the driver's memory), which a greedy run never uses
    def noise_aware() -> type[Policy]:
        from .posterior import PosteriorPolicy
        return PosteriorPolicy

    def noise_aware_v1() -> type[Policy]:
        from .noise_aware import NoiseAwarePolicy
        return NoiseAwarePolicy

    def noise_aware_v2() -> type[Policy]:
        from .sequential import SequentialPolicy
        return SequentialPolicy

    registry: dict[str, Callable[[], type[Policy]]] = {
        "greedy": lambda: GreedyPolicy, "noise-aware": noise_aware,
        "noise-aware-v1": noise_aware_v1, "noise-aware-v2": noise_aware_v2}
    if name not in registry:
        raise ConfigError(f"unknown policy '{name}' — choose one of: {', '.join(sorted(registry))}")
    return registry[name]()()


__all__ = ["Decision", "Estimate", "FirstRun", "Policy", "PolicyContext", "Sample", "SeededGroup",
           "Verdict", "make_policy", "DEFAULT_POLICY"]
