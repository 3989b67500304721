"""`autoresearch evolve-program`: a writer agent's program.md variants, compared, the winner kept.

Offline: the writer is the fake OpenAI server (its stand-in model also plays the research agent
that follows program.md) or the fake coding-agent CLI; the research runs are real runs of the
quickstart target, or of a tiny deterministic target where "no difference" must be exact.
"""

from __future__ import annotations

import json

from conftest import FAKE_AGENT_CLI, build_target
from test_compare import MAGIC, follows_program, git, quickstart, rows_of, run

from autoresearch.ledger import Ledger
from autoresearch.testing import FakeOpenAIServer

WRITER_MARK = "You are improving a research organisation."


def prompt_of(body: dict) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


def generations(target, meta: str) -> list[dict]:
    ledger = Ledger(target / ".autoresearch" / "ledger.db", readonly=True)
    try:
        return ledger.generations(meta)
    finally:
        ledger.close()


def test_a_significantly_better_variant_is_committed_on_the_meta_branch(tmp_path):
    target = quickstart(tmp_path)
    first = (target / "program.md").read_text().splitlines()[0]
    writer_prompts = []

    def model(body: dict) -> str:
        prompt = prompt_of(body)
        if WRITER_MARK in prompt:
            writer_prompts.append(prompt)
            return (f"Description: tell the agent the magic\n\nprogram.md\n<<<<<<< SEARCH\n{first}\n"
                    f"=======\n{first}\n\n{MAGIC}\n>>>>>>> REPLACE\n")
        return follows_program(body)

    args = ["evolve-program", "--tag", "t", "--agent", "openai:fake", "--experiments", "2",
            "--repeats", "2", "--budget", "0.3", "--policy", "greedy", "-q"]
    head = git(target, "rev-parse", "HEAD").strip()
    with FakeOpenAIServer([], responder=model) as server:
        r = run(args, target, server.env())
        assert r.returncode == 0, r.stdout + r.stderr
        assert "g1v1 is significantly better" in r.stdout
        program = git(target, "show", "autoresearch/meta-t:program.md")
        assert MAGIC in program and program.startswith(first)
        assert git(target, "rev-parse", "autoresearch/meta-t^").strip() == head
        message = git(target, "log", "-1", "--format=%B", "autoresearch/meta-t")
        assert "generation 1 winner g1v1" in message and "comparison meta-t-g1" in message
        (gen,) = generations(target, "meta-t")
        assert gen["winner"] == "g1v1" and gen["finished"]
        assert gen["commit"] == git(target, "rev-parse", "autoresearch/meta-t").strip()
        assert len(writer_prompts) == 1 and "first generation" in writer_prompts[0]
        # every run of the generation's comparison is tagged with its organisation
        runs = rows_of(target)
        assert {rows[0].org for rows in runs.values()} == {"incumbent", "g1v1"}
        requests, experiments = len(server.requests), sum(len(v) for v in runs.values())
        r = run(args, target, server.env())           # done: nothing asked or run again
        assert r.returncode == 0, r.stdout + r.stderr
        assert "g1v1 is significantly better" in r.stdout
        assert len(writer_prompts) == 1
        assert sum(len(v) for v in rows_of(target).values()) == experiments
        assert all(q["method"] == "GET" for q in server.requests[requests:])


def test_no_better_variant_leaves_the_incumbent_and_the_next_writer_reads_the_results(tmp_path):
    root = build_target(tmp_path, files={"program.md": "# tiny program\nLower the score.\n"})
    script = tmp_path / "writer.jsonl"
    script.write_text("".join(json.dumps({"description": f"variant {n}",
                                          "write": {"program.md": f"variant {n}\n"}}) + "\n"
                              for n in (1, 2)))

    def research(body: dict) -> str:      # every organisation tries the same, worse, change
        return ("Description: raise VALUE\n\ntrain.py\n<<<<<<< SEARCH\nVALUE = 10.0\n=======\n"
                "VALUE = 20.0\n>>>>>>> REPLACE\n")

    head = git(root, "rev-parse", "HEAD").strip()
    with FakeOpenAIServer([], responder=research) as server:
        r = run(["evolve-program", "--tag", "t2", "--generations", "2", "--agent", "openai:fake",
                 "--writer", f"command:{FAKE_AGENT_CLI} --script {script}",
                 "--experiments", "2", "--repeats", "2", "--policy", "greedy", "-q"],
                root, server.env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("no variant is significantly better: the incumbent stays") == 2
    assert git(root, "rev-parse", "autoresearch/meta-t2").strip() == head
    gens = generations(root, "meta-t2")
    assert [g["winner"] for g in gens] == [None, None]
    assert [g["variants"][0]["text"] for g in gens] == ["variant 1\n", "variant 2\n"]
    assert all(g["incumbent"] == "# tiny program\nLower the score.\n" for g in gens)
    tests = gens[0]["analysis"]["tests"]
    assert tests[0]["p"] == 1.0 and not tests[0]["significant"]     # exactly equal: no difference
    prompts = sorted((script.parent / (script.name + ".prompts")).glob("*.txt"),
                     key=lambda p: int(p.stem))
    assert len(prompts) == 2
    second = prompts[1].read_text()
    assert "Comparison meta-t2-g1" in second and "## g1v1: improvement 0" in second
    assert "failures: none" in second and "variant 1" in second
    assert "VALUE = 10.0" in second                   # the target's editable file, for reference


def test_a_writer_that_cannot_write_text_is_refused_before_anything_runs(tmp_path):
    root = build_target(tmp_path)
    r = run(["evolve-program", "--tag", "t3", "--experiments", "2"], root)
    assert r.returncode == 1
    assert "--writer optuna cannot write program.md" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert git(root, "branch", "--list", "autoresearch/*").strip() == ""


def test_the_winner_is_significantly_better_than_the_incumbent_after_holm():
    from autoresearch.evolve import _winner

    def rep(p1: float, p2: float, d1: float = 0.3, d2: float = 0.5) -> dict:
        tests = [{"a": "incumbent", "b": "g1v1", "difference": -d1, "p": p1},
                 {"a": "incumbent", "b": "g1v2", "difference": -d2, "p": p2},
                 {"a": "g1v1", "b": "g1v2", "difference": d1 - d2, "p": 0.9}]
        orgs = [{"org": o, "improvement": {"mean": m}}
                for o, m in (("incumbent", 0.0), ("g1v1", d1), ("g1v2", d2))]
        return {"analysis": {"tests": tests, "organisations": orgs}}

    names = ["g1v1", "g1v2"]
    assert _winner(rep(0.01, 0.04), names, 0.05) == "g1v2"     # Holm: 0.02 and 0.04, larger mean
    assert _winner(rep(0.01, 0.03, d2=0.1), names, 0.05) == "g1v1"
    assert _winner(rep(0.03, 0.04), names, 0.05) is None       # Holm: 0.06 and 0.06
    assert _winner(rep(0.001, 0.5, d1=-0.3), names, 0.05) is None   # significantly worse
