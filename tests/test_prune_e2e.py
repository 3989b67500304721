"""--prune through the real loop: a run whose progress curve is clearly worse than the best's
is stopped early (status `pruned`), a better one runs to the end and is kept."""

from __future__ import annotations

import json

from conftest import ar, proposal, write_script

# prints ten progress points over about a second: loss falls from 2*VALUE to VALUE
CURVE = (
    "for i in range(1, 11):\n"
    "    print(f'progress: {i / 10:.1f} loss: {VALUE * (2 - i / 10):.4f}', flush=True)\n"
    "    time.sleep(0.1)\n"
)


def test_prune_stops_a_clearly_worse_curve_and_keeps_a_better_one(tmp_path, make_target):
    from conftest import train_source

    root = make_target(tmp_path, files={"train.py": train_source(10.0, 0.0, CURVE)},
                       extra_toml='[prune]\nwarmup = 0.2\n')
    script = write_script(tmp_path / "p.jsonl", [
        proposal(100.0, extra=CURVE, description="much worse"),
        proposal(9.0, extra=CURVE, description="better"),
    ])
    p = ar(root, "run", "--tag", "pr", "--agent", f"script:{script}", "--policy", "greedy",
           "--prune")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in ar(root, "export", "--format", "jsonl", check=True).stdout.splitlines()]
    by_desc = {r["description"]: r for r in rows}
    worse, better = by_desc["much worse"], by_desc["better"]
    assert worse["status"] == "pruned", worse
    assert better["status"] == "keep", better
    # stopped well before the end of its curve, so it cost less time than a full run
    assert worse["wall_time"] < better["wall_time"] - 0.3
    assert worse["metric"] is None
