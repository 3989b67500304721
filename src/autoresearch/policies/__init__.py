"""Acceptance policies, by name.

- `noise-aware` (the default, policies/posterior.py): keeps what is really better, deciding on
  a posterior over the candidate's effect with a prior learned from the run's own history,
  judged against the best as measured now, with the noise where the comparison is made;
- `noise-aware-v2` (policies/sequential.py): the same guards with a fixed sequential test;
- `greedy` (policies/greedy.py): the original's one-run rule;
- `noise-aware-v1` (policies/noise_aware.py): the first statistical policy, kept for comparison.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Decision, Estimate, FirstRun, Policy, PolicyContext, Sample, Verdict
from .greedy import GreedyPolicy

DEFAULT_POLICY = "noise-aware"


def make_policy(name: str) -> Policy:
    from .noise_aware import NoiseAwarePolicy
    from .posterior import PosteriorPolicy
    from .sequential import SequentialPolicy

    registry: dict[str, type[Policy]] = {"greedy": GreedyPolicy, "noise-aware": PosteriorPolicy,
                                         "noise-aware-v1": NoiseAwarePolicy,
                                         "noise-aware-v2": SequentialPolicy}
    if name not in registry:
        raise ConfigError(f"unknown policy '{name}' — choose one of: {', '.join(sorted(registry))}")
    return registry[name]()


__all__ = ["Decision", "Estimate", "FirstRun", "Policy", "PolicyContext", "Sample", "Verdict", "make_policy", "DEFAULT_POLICY"]
