"""Attacks on nanochat's evaluator: a train.py that cheats must not change the recorded val_bpb.

Each attack edits a trained model's train.py (or, for the byte table, what the run step can
write) and runs the locked `python prepare.py --evaluate` for real, on the CPU profile with the
offline corpus. "Held" means: the evaluator prints the honest val_bpb, or refuses to score
(`eval_error`, so the harness records no metric and nothing is kept). Against the code before
autoresearch.isolate, these attacks recorded 0.000000, 0.123 and a quarter of the honest figure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tiktoken")
pytest.importorskip("pyarrow")

from nanochat_kit import TEMPLATE, run_python  # noqa: E402
from nanochat_kit import nanochat_env as _env  # noqa: E402
from nanochat_kit import parse_metrics as _metrics  # noqa: E402

HAS_BWRAP = shutil.which("bwrap") is not None and sys.platform.startswith("linux")
MODES = ["sandbox", "plain"] if HAS_BWRAP else ["plain"]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300):
    return run_python(args, cwd, env, timeout)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """(cache, trained work dir, honest val_bpb)."""
    root = tmp_path_factory.mktemp("cheats")
    cache = root / "cache"
    work = shutil.copytree(TEMPLATE, root / "work", ignore=shutil.ignore_patterns("__pycache__"))
    for args, extra in ((["prepare.py"], {}), (["train.py"], {"AUTORESEARCH_BUDGET_SECONDS": "2"})):
        r = _run(args, work, _env(cache, **extra))
        assert r.returncode == 0, r.stdout + r.stderr
    r = _run(["prepare.py", "--evaluate"], work, _env(cache))
    assert r.returncode == 0, r.stdout + r.stderr
    return cache, work, _metrics(r.stdout)["val_bpb"]


def _cheat(honest, tmp_path: Path, name: str, module_code: str = "",
           forward_code: str = "") -> Path:
    """A copy of the trained work dir whose train.py runs `module_code` at import time and
    `forward_code` at the start of GPT.forward (where `idx` is the input)."""
    _, src, _ = honest
    work = shutil.copytree(src, tmp_path / name)
    code = (work / "train.py").read_text()
    marker = "    def forward(self, idx, targets=None, reduction=\"mean\"):\n"
    assert marker in code and "\nimport gc" in code
    if forward_code:
        body = "".join("        " + line + "\n" for line in forward_code.strip().splitlines())
        code = code.replace(marker, marker + body)
    if module_code:
        code = code.replace("\nimport gc", "\n" + module_code.strip() + "\nimport gc", 1)
    (work / "train.py").write_text(code)
    return work


def _held(r, honest_bpb: float) -> None:
    m = _metrics(r.stdout)
    if "val_bpb" in m:
        assert r.returncode == 0
        assert abs(m["val_bpb"] - honest_bpb) < 1e-4, (m["val_bpb"], honest_bpb, r.stdout)
    else:
        assert r.returncode == 1 and "eval_error" in r.stdout, r.stdout + r.stderr


# the targets, found by walking the stack, or read from the evaluator's pinned rows on disk
FIND_TARGETS = """
import glob as _glob, inspect as _inspect, numpy as _np
_found = None
for _fr in _inspect.stack():
    for _v in list(_fr.frame.f_locals.values()):
        if (isinstance(_v, torch.Tensor) and _v.dim() == 2 and _v.shape == idx.shape
                and _v is not idx and torch.equal(_v[:, :-1].to(idx.device), idx[:, 1:])):
            _found = _v.to(idx.device)
if _found is None:
    for _path in _glob.glob(CACHE_GLOB, recursive=True):
        _rows = torch.from_numpy(_np.load(_path)).long().to(idx.device)
        _hit = [(_rows[:, :-1] == r).all(1).nonzero() for r in idx]
        if all(len(h) for h in _hit):
            _found = torch.stack([_rows[h[0, 0], 1:] for h in _hit])
if _found is not None:
    _out = torch.full((*idx.shape, self.config.vocab_size), -30.0, device=idx.device)
    return _out.scatter(-1, _found[..., None], 30.0)
"""


@pytest.mark.parametrize("mode", MODES)
def test_forward_reading_the_targets_from_the_stack_or_the_cache_changes_nothing(
        honest, tmp_path, mode):
    """Under bubblewrap the cache is hidden and nothing is found: the honest figure. Without
    it only the stack walk is tried: the pinned rows are readable there, and a model that
    cheats on whole batches it finds in them escapes the probes now and then (README)."""
    cache, _, honest_bpb = honest
    glob = str((cache if mode == "sandbox" else tmp_path / "nowhere") / "**" / "eval_rows.npy")
    work = _cheat(honest, tmp_path, "targets", module_code=f"CACHE_GLOB = {glob!r}",
                  forward_code=FIND_TARGETS)
    r = _run(["prepare.py", "--evaluate"], work, _env(cache, AUTORESEARCH_ISOLATE=mode))
    _held(r, honest_bpb)
    assert r.returncode == 0, r.stdout  # nothing found: the model stayed honest


@pytest.mark.parametrize("mode", MODES)
def test_replacing_the_evaluators_functions_at_import_time_changes_nothing(honest, tmp_path,
                                                                            mode):
    cache, _, honest_bpb = honest
    module_code = """
import sys as _sys
_main = _sys.modules["__main__"]
_main.evaluate_bpb = lambda *a, **k: 0.123
_main.evaluate = lambda *a, **k: print("val_bpb: 0.123") or 0
import prepare as _p
_p.evaluate_isolated = lambda *a, **k: {"val_bpb": 0.123}
_p.token_bytes_table = lambda tok: _p.torch.full((tok.get_vocab_size(),), 1000)
_p.Tokenizer.from_bytes = classmethod(lambda cls, data: None)
"""
    work = _cheat(honest, tmp_path, "monkeypatch", module_code=module_code)
    r = _run(["prepare.py", "--evaluate"], work, _env(cache, AUTORESEARCH_ISOLATE=mode))
    assert r.returncode == 0, r.stdout + r.stderr
    _held(r, honest_bpb)
    assert "0.123" not in r.stdout


def _pins(cache: Path) -> tuple[Path, Path]:
    manifest = cache / "nanochat" / "prepared-cpu.json"
    table = next((cache / "nanochat" / "tokenizer").glob("offline-*/token_bytes.pt"))
    return manifest, table


@pytest.mark.parametrize("rehash", [False, True], ids=["table", "table-and-manifest"])
def test_run_step_multiplying_the_token_byte_table_changes_nothing(honest, tmp_path, rehash):
    """What the run step could do without the sandbox: scale the cached byte table by 4 (the
    figure drops to a quarter), and also rewrite the manifest's hash of it."""
    cache0, work, honest_bpb = honest
    cache = shutil.copytree(cache0, tmp_path / "cache")
    manifest, table = _pins(cache)
    poison = (f"import torch, json, hashlib\n"
              f"t = torch.load({str(table)!r}) * 4\n"
              f"torch.save(t, {str(table)!r})\n")
    if rehash:
        poison += (f"m = json.load(open({str(manifest)!r}))\n"
                   f"m['sha256']['token_bytes'] = hashlib.sha256(open({str(table)!r}, 'rb')"
                   f".read()).hexdigest()\n"
                   f"json.dump(m, open({str(manifest)!r}, 'w'))\n")
    r = _run(["-c", poison], work, _env(cache))
    assert r.returncode == 0, r.stderr
    before = hashlib.sha256(table.read_bytes()).hexdigest()
    assert (json.loads(manifest.read_text())["sha256"]["token_bytes"] == before) is rehash
    r = _run(["prepare.py", "--evaluate"], work, _env(cache))
    _held(r, honest_bpb)
    assert "token_bytes.pt" in r.stdout  # refused, naming the file


PEEK_WITH_MEMORY = """
import numpy as _np
_out = self._honest(idx)
_nxt = torch.roll(idx, -1, 1)
_out = _out.scatter_add(-1, _nxt[..., None], torch.full_like(_out[..., :1], 8.0))
_out[:, -1] = self._honest(idx)[:, -1]
global _SEEN
for _b in range(idx.shape[0]):   # replay what an earlier row with this prefix got
    _row = idx[_b].cpu().numpy()
    for _old_row, _old_out in _SEEN:
        _same = int(_np.argmin(_np.append(_old_row == _row, False)))
        if _same > 16:
            _out[_b, :_same] = _old_out[:_same]
    _SEEN.append((_row, _out[_b].clone()))
return _out
"""


def _peeking_cheat(honest, tmp_path: Path) -> Path:
    """A work dir whose model runs PEEK_WITH_MEMORY around the template's own forward."""
    module_code = "_SEEN = []"
    work = _cheat(honest, tmp_path, "peek", module_code=module_code,
                  forward_code=PEEK_WITH_MEMORY)
    code = (work / "train.py").read_text()
    # the honest forward stays reachable as self._honest (the cheat wraps it)
    code = code.replace("    def forward(self, idx, targets=None, reduction=\"mean\"):\n",
                        "    def forward(self, idx, targets=None, reduction=\"mean\"):\n"
                        "        if targets is not None or getattr(self, '_inner', False):\n"
                        "            return self._forward(idx, targets, reduction)\n", 1)
    code += ("\n\ndef _honest(self, idx):\n    return self._forward(idx)\n\n\n"
             "GPT._honest = _honest\n")
    # the original forward, renamed, is what _honest runs: reuse the template's own code
    original = (honest[1] / "train.py").read_text()
    start = original.index("    def forward(self, idx, targets=None, reduction=\"mean\"):\n")
    end = original.index("    def setup_optimizer")
    inner = original[start:end].replace("def forward(", "def _forward(", 1)
    code = code.replace("    def setup_optimizer", inner + "    def setup_optimizer", 1)
    (work / "train.py").write_text(code)
    return work


def test_peeking_model_that_replays_its_answers_for_repeated_prefixes_is_caught(honest,
                                                                               tmp_path):
    """A model that reads the next input token (a huge gain) and remembers every row it has
    scored, so that a causality probe sharing a prefix gets the same answers, is still caught:
    a row and its probe never reach the same process."""
    if not HAS_BWRAP:
        pytest.skip("the two hosts are kept apart by bubblewrap")
    cache, _, _ = honest
    work = _peeking_cheat(honest, tmp_path)
    r = _run(["prepare.py", "--evaluate"], work, _env(cache))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not causal" in r.stdout and "val_bpb" not in _metrics(r.stdout)


# the evaluator's own steps with its secret seed fixed, so that a draw can be replayed
SEEDED_EVALUATION = """
import json, sys
from pathlib import Path
import numpy as np
import prepare as p
tok, table, rows, pool = p._verify_inputs(json.loads(p.manifest_path().read_text()), p.PROFILE)
for seed in map(int, sys.argv[1:]):
    try:
        f = p.evaluate_isolated(Path(".").resolve(), rows, (table, p.token_raw_bytes_table(tok)),
                                tok.get_vocab_size(), tok.get_bos_token_id(), pool, p.PROFILE,
                                atol=1e-3, rng=np.random.default_rng(seed))
        print(f"seed {seed}: val_bpb {f['val_bpb']:.6f} sandboxed {f['sandboxed']}")
    except p.EvalFailure as e:
        print(f"seed {seed}: eval_error: {e}")
"""

# draws at which every probe of the evaluator before the fix was fooled: the offline CPU rows
# hold 17 distinct rows 128 times, so a probe's host had often scored a copy of its source
FOOLED_BEFORE = (5, 27, 53)


def test_peeking_model_cannot_replay_a_copy_of_the_probed_row_from_its_own_host(honest,
                                                                               tmp_path):
    """The replaying peeker at the draws that fooled every probe when duplicate rows were each
    scored on both hosts: the probe's host had already answered an identical row and replayed
    those answers. Now each distinct row is scored once (weighted by its count) and a probe
    diverges only past every prefix its source shares with another input, so it is caught."""
    if not HAS_BWRAP:
        pytest.skip("the two hosts are kept apart by bubblewrap")
    cache, _, _ = honest
    work = _peeking_cheat(honest, tmp_path)
    r = _run(["-c", SEEDED_EVALUATION, *map(str, FOOLED_BEFORE)], work, _env(cache))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(FOOLED_BEFORE), r.stdout + r.stderr
    for line in lines:
        assert "eval_error: model is not causal" in line, r.stdout
