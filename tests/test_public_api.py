"""The public surface does not drift: the exported names and the CLI's subcommands."""

from __future__ import annotations

import argparse
import importlib

import autoresearch
from autoresearch.cli import build_parser

EXPORTED = [
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

SUBCOMMANDS = ["init", "run", "start", "try", "status", "notes", "log", "show", "export", "plot",
               "demo", "dashboard", "hub", "verify", "promote", "compare", "evolve-program"]


def test_all_is_exactly_the_public_names():
    assert sorted(autoresearch.__all__) == sorted(EXPORTED)
    assert len(autoresearch.__all__) == len(set(autoresearch.__all__))


def test_every_exported_name_is_importable():
    module = importlib.import_module("autoresearch")
    for name in EXPORTED:
        assert getattr(module, name, None) is not None, name
    namespace: dict = {}
    exec("from autoresearch import *", namespace)
    assert set(EXPORTED) <= set(namespace)


def test_the_cli_has_exactly_its_subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)
