"""Acceptance policies, by name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Decision, Estimate, Policy, PolicyContext, Sample, Verdict
from .greedy import GreedyPolicy

DEFAULT_POLICY = "noise-aware"


def make_policy(name: str) -> Policy:
    registry: dict[str, type[Policy]] = {"greedy": GreedyPolicy}
    try:
        from .noise_aware import NoiseAwarePolicy
        registry["noise-aware"] = NoiseAwarePolicy
    except ImportError:  # pragma: no cover - the module arrives with its issue
        pass
    if name not in registry:
        raise ConfigError(f"unknown policy '{name}' — choose one of: {', '.join(sorted(registry))}")
    return registry[name]()


__all__ = ["Decision", "Estimate", "Policy", "PolicyContext", "Sample", "Verdict", "make_policy", "DEFAULT_POLICY"]
