"""`--results-format original`: results.tsv as the original's analysis.ipynb reads it.

One row per candidate (the baseline first), repeats folded into the candidate's mean, statuses
keep / discard / crash only, crashes with a 0.000000 metric; the kept row shows the same value
as `status`.
"""

from __future__ import annotations

import csv
import json

from conftest import ar, build_target, ledger_rows, proposal, write_script

NOISY_EVALUATE = '''"""The evaluator (LOCKED): 1% noise per experiment."""
import os, random
noise = random.Random(int(os.environ["AUTORESEARCH_EXPERIMENT"])).gauss(0.0, 0.01)
print(f"val_bpb: {float(open('out.txt').read()) * (1 + noise):.6f}")
'''


def test_original_format_has_one_row_per_candidate_with_repeats_folded(tmp_path):
    root = build_target(tmp_path, metric="val_bpb", files={"evaluate.py": NOISY_EVALUATE})
    steps = [proposal(5.0, description="halve it"), proposal(20.0, description="double it"),
             {"description": "break it", "files": {"train.py": "raise SystemExit(3)\n"}}]
    script = write_script(tmp_path / "steps.jsonl", steps)
    p = ar(root, "run", "--tag", "t", "--agent", f"script:{script}", "--max-experiments", "12",
           "--results-format", "original")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = ledger_rows(root, "t")
    assert any(r["status"] == "repeat" for r in rows), "no repeats: nothing to fold"
    with open(root / "results.tsv", newline="") as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert list(table[0]) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert [t["description"] for t in table] == ["baseline", "halve it", "double it", "break it"]
    assert [t["status"] for t in table] == ["keep", "keep", "discard", "crash"]
    assert table[3]["val_bpb"] == "0.000000"
    # the baseline's row is the mean of all its runs, not its first draw
    tree = rows[0]["commit"]
    base_runs = [r["metric"] for r in rows if r["commit"] == tree and r["metric"] is not None]
    assert len(base_runs) >= 2
    assert float(table[0]["val_bpb"]) == round(sum(base_runs) / len(base_runs), 6)
    # the kept row says what `status` says
    info = json.loads(ar(root, "status", "--json", check=True).stdout)
    assert table[1]["val_bpb"] == f"{info['best']['reported']['value']:.6f}"
