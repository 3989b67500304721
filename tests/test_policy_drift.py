"""The default policy under machine drift and on deterministic metrics, through the real loop.

A target whose metric shifts by +30% halfway through a run (its evaluator reads a file outside
the repository that flips) must give no false keep, and report the gain of the real improvement
as measured under one set of conditions. A deterministic target must cost no repeats.
"""

from __future__ import annotations

import json
import threading

from conftest import ar, build_target, ledger_rows, proposal, write_script

# score = VALUE * (1.3 once the test flips the outside file) * (1 + 1% noise from the experiment)
DRIFT_EVALUATE = '''"""The evaluator (LOCKED): its machine gets 30% faster halfway through the run."""
import os, random
flip = {flip!r}
factor = float(open(flip).read()) if os.path.exists(flip) else 1.0
noise = random.Random(int(os.environ["AUTORESEARCH_EXPERIMENT"])).gauss(0.0, 0.01)
print(f"score: {{float(open('out.txt').read()) * factor * (1 + noise):.6f}}")
'''


def test_a_metric_that_shifts_30_percent_halfway_gives_no_false_keep_and_an_honest_gain(tmp_path):
    flip = tmp_path / "machine-speed"           # outside the repository; the test flips it
    root = build_target(tmp_path, value=10.0, direction="maximize",
                        files={"evaluate.py": DRIFT_EVALUATE.format(flip=str(flip))})
    steps = [proposal(12.0, description="a real 20% improvement")]
    # a comment-only change would be a near-duplicate (never run): each adds a line of code
    steps += [proposal(12.0, description=f"no effect {k}", extra=f"IDEA_{k} = 'none'\n")
              for k in range(14)]
    script = write_script(tmp_path / "steps.jsonl", steps)
    logs = root / ".autoresearch" / "logs" / "t"
    done = threading.Event()

    def shift_halfway() -> None:   # once experiment 13 has started, the machine is 30% faster
        while not done.is_set():
            if logs.is_dir() and len(list(logs.glob("000*.log"))) >= 13:
                flip.write_text("1.3")
                return
            done.wait(0.02)

    shifter = threading.Thread(target=shift_halfway)
    shifter.start()
    try:
        p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--max-experiments", "28")
    finally:
        done.set()
        shifter.join()
    assert p.returncode == 0, p.stdout + p.stderr
    assert flip.exists(), "the shift never happened: the test proves nothing"
    rows = ledger_rows(root, "t")
    kept = [r["description"] for r in rows if r["status"] == "keep"]
    assert kept == ["baseline", "a real 20% improvement"], kept
    # the best was measured again beside the candidates that only looked better
    assert any(r["description"].startswith("re-measure best") for r in rows)
    info = json.loads(ar(root, "status", "--json", check=True).stdout)
    rep = info["best"]["reported"]
    assert rep["same_conditions"] is True
    # +2.0 on 10 measured under one set of conditions, not +2.0 * 1.3 + 3.0 across the shift
    assert abs(rep["gain"] - 2.0) < 0.5, rep
    # one reported best: the run's final line, `status` and results.tsv say the same number
    shown = f"{rep['value']:.6f}"
    assert f"best score {shown}" in p.stdout
    assert shown in ar(root, "status", check=True).stdout
    assert shown in (root / "results.tsv").read_text()


def test_a_deterministic_metric_costs_no_repeats(tmp_path):
    root = build_target(tmp_path, value=10.0)
    steps = [proposal(10.0 - k * 0.5 if k % 3 == 0 else 10.0 + k, description=f"idea {k}")
             for k in range(30)]
    script = write_script(tmp_path / "steps.jsonl", steps)
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--max-experiments", "20")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_rows(root, "t")
    assert len(rows) == 20
    base_runs = [r for r in rows if r["description"].startswith("re-measure the baseline")]
    assert len(base_runs) == 1, "two agreeing baseline runs show the metric is deterministic"
    new_ideas = [r for r in rows if r["kind"] == "candidate"]
    assert len(new_ideas) >= 15, [r["description"] for r in rows]
    assert not [r for r in rows if r["status"] == "repeat" and r["seq"] > 2]
    # exactly the strictly better ideas are kept (idea 0 equals the baseline: not better)
    better = {f"idea {k}" for k in range(3, 30, 3)}
    assert [r["description"] for r in rows if r["status"] == "keep"][1:] == [
        r["description"] for r in new_ideas if r["description"] in better]
