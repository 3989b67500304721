"""Acceptance policies, by name.

- `noise-aware` (the default, policies/sequential.py): keeps what is really better, judged
  against the best as measured now, with the noise where the comparison is made;
- `greedy` (policies/greedy.py): the original's one-run rule;
- `noise-aware-v1` (policies/noise_aware.py): the first statistical policy, kept for comparison.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Decision, Policy, PolicyContext, Sample, Verdict
from .greedy import GreedyPolicy

DEFAULT_POLICY = "noise-aware"


def make_policy(name: str) -> Policy:
    from .noise_aware import NoiseAwarePolicy
    from .sequential import SequentialPolicy

    registry: dict[str, type[Policy]] = {"greedy": GreedyPolicy, "noise-aware": SequentialPolicy,
                                         "noise-aware-v1": NoiseAwarePolicy}
    if name not in registry:
        raise ConfigError(f"unknown policy '{name}' — choose one of: {', '.join(sorted(registry))}")
    return registry[name]()


__all__ = ["Decision", "Policy", "PolicyContext", "Sample", "Verdict", "make_policy", "DEFAULT_POLICY"]
