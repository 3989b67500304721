"""The hidden holdout (Goodhart guard), through the real loop.

train.py writes its validation value and, separately, what its model would score on held-out
data. A proposal that games the validation metric (it improves) while the holdout worsens must
raise the divergence alarm, show it in `status`, and act as `on_divergence` says. The holdout
value never reaches what the agent sees: the experiment's metrics (the prompt's source) and log.
"""

from __future__ import annotations

import json

import pytest
from conftest import ar, build_target, git, ledger_rows, write_script

EVALUATE = '''"""The evaluator (LOCKED); --holdout scores the held-out split."""
import sys
name = "hold.txt" if "--holdout" in sys.argv[1:] else "out.txt"
print(f"score: {float(open(name).read())}")
'''


def _train(value: float, hold: float) -> str:
    return (f"VALUE = {value!r}\nHOLD = {hold!r}\n"
            "open('out.txt', 'w').write(str(VALUE))\nopen('hold.txt', 'w').write(str(HOLD))\n")


def _target(tmp_path, on_divergence: str):
    root = build_target(tmp_path, holdout="python evaluate.py --holdout",
                        on_divergence=on_divergence, artifacts=["out.txt", "hold.txt"],
                        files={"evaluate.py": EVALUATE, "train.py": _train(10.0, 10.0)})
    steps = [{"description": "honest gain", "files": {"train.py": _train(8.0, 8.0)}},
             {"description": "overfit the validation set", "files": {"train.py": _train(5.0, 30.0)}},
             {"description": "after it", "files": {"train.py": _train(7.0, 7.0)}}]
    script = write_script(tmp_path / "steps.jsonl", steps)
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--max-experiments", "6")
    assert p.returncode == 0, p.stdout + p.stderr
    return root, p.stdout, {r["description"]: r for r in ledger_rows(root, "t")}


@pytest.mark.parametrize("mode", ["warn", "revert"])
def test_validation_gain_with_a_worse_holdout_raises_the_alarm(tmp_path, mode):
    root, out, rows = _target(tmp_path, mode)
    gamed = rows["overfit the validation set"]
    decision = gamed["decision"]
    assert decision["holdout"] == 30.0
    assert decision["holdout_alarm"]["holdout_change"] == pytest.approx(22.0)
    assert "holdout divergence at #" in out
    status = ar(root, "status", check=True).stdout
    assert "HOLDOUT DIVERGENCE" in status
    # the honest gain raised nothing
    assert "holdout_alarm" not in rows["honest gain"]["decision"]
    if mode == "warn":
        assert gamed["status"] == "keep"
    else:
        assert gamed["status"] == "discard" and gamed["reason"].startswith("reverted")
        branch = git(root, "show", "autoresearch/t:train.py")
        assert "VALUE = 5.0" not in branch
        # the run went on from the reverted best
        assert rows["after it"]["status"] == "keep"


def test_the_holdout_never_reaches_the_agents_view(tmp_path):
    root, _, rows = _target(tmp_path, "warn")
    for r in rows.values():
        assert "30.0" not in json.dumps(r["metrics"])
    gamed = rows["overfit the validation set"]
    log = open(gamed["log_path"]).read()
    assert "--holdout" not in log and "30.0" not in log
    assert "30.0" in open(gamed["log_path"] + ".holdout").read()
