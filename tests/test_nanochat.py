"""The nanochat template: data download, tokenizer, dataloader, and an evaluator that cannot be fooled.

Everything runs the template's real prepare.py / train.py in subprocesses on the CPU profile with
the offline corpus (the standard library's own source), in a cache under tmp_path. Downloads are
tested against an HTTP server on 127.0.0.1 started here.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tiktoken")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from nanochat_kit import TEMPLATE, run_python  # noqa: E402
from nanochat_kit import nanochat_env as _env  # noqa: E402
from nanochat_kit import parse_metrics as _metrics  # noqa: E402

import autoresearch  # noqa: E402


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240):
    return run_python(args, cwd, env, timeout)


def _copy_template(dest: Path) -> Path:
    shutil.copytree(TEMPLATE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache prepared once by the template's own `python prepare.py`."""
    root = tmp_path_factory.mktemp("nanochat")
    cache = root / "cache"
    work = _copy_template(root / "setup")
    r = _run(["prepare.py"], work, _env(cache))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Data source: offline" in r.stdout
    return cache


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """A working directory after `python train.py` for 2 s, and its honest evaluation."""
    work = _copy_template(tmp_path_factory.mktemp("nanochat") / "work")
    r = _run(["train.py"], work, _env(cache, AUTORESEARCH_BUDGET_SECONDS="2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "model.pt").exists() and (work / "model.json").exists()
    ev = _run(["prepare.py", "--evaluate"], work, _env(cache))
    assert ev.returncode == 0, ev.stdout + ev.stderr
    return work, _metrics(ev.stdout)


@pytest.fixture(scope="module")
def prepare_mod(cache):
    """The template's prepare.py imported in this process (CPU profile, the prepared cache)."""
    keys = ("AUTORESEARCH_NANOCHAT_PROFILE", "AUTORESEARCH_CACHE", "AUTORESEARCH_DATA",
            "AUTORESEARCH_CPU_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(AUTORESEARCH_NANOCHAT_PROFILE="cpu", AUTORESEARCH_CACHE=str(cache),
                      AUTORESEARCH_DATA="offline", AUTORESEARCH_CPU_THREADS="1")
    spec = importlib.util.spec_from_file_location("nanochat_prepare", TEMPLATE / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# --- downloads -----------------------------------------------------------------------------


class _FlakyServer:
    """Serves files from a folder; the first request for each name in `fail_first` gets a 503,
    and for each name in `truncate_first` half of the body."""

    def __init__(self, root: Path, fail_first=(), truncate_first=()):
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.hits[name] = outer.hits.get(name, 0) + 1
                first = outer.hits[name] == 1
                path = root / name
                if not path.exists():
                    self.send_error(404)
                    return
                if first and name in fail_first:
                    self.send_error(503)
                    return
                body = path.read_bytes()
                if first and name in truncate_first:
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _write_shard(path: Path, n: int, tag: str) -> None:
    pq.write_table(pa.table({"text": [f"{tag} document {i} " * 20 for i in range(n)]}), path)


def test_climbmix_download_retries_transient_failures(prepare_mod, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for i in (0, 1):
        _write_shard(served / f"shard_{i:05d}.parquet", 50, f"train{i}")
    _write_shard(served / "shard_06542.parquet", 20, "val")
    server = _FlakyServer(served, fail_first={"shard_00000.parquet"},
                          truncate_first={"shard_06542.parquet"})
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    try:
        assert prepare_mod.download_climbmix(2, base_url=server.url, backoff=0.01)
    finally:
        server.close()
    out = tmp_path / "cache" / "nanochat" / "data" / "climbmix"
    assert sorted(p.name for p in out.iterdir()) == [
        "shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert server.hits == {"shard_00000.parquet": 2, "shard_00001.parquet": 1,
                           "shard_06542.parquet": 2}
    # the truncated first body never took the file's name: the pinned val shard is whole
    assert pq.read_table(out / "shard_06542.parquet").num_rows == 20
    train, val = prepare_mod.split_files("climbmix")
    assert [p.name for p in train] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert val.name == "shard_06542.parquet"


def test_download_gives_up_on_missing_file_without_leaving_partial_files(prepare_mod, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = _FlakyServer(served)
    try:
        t0 = time.time()
        ok = prepare_mod.download_file(f"{server.url}/shard_00000.parquet",
                                       tmp_path / "out" / "shard_00000.parquet", backoff=0.01)
    finally:
        server.close()
    assert not ok and time.time() - t0 < 5
    assert server.hits == {"shard_00000.parquet": 1}  # a 404 is not retried
    assert list((tmp_path / "out").iterdir()) == []


def test_offline_corpus_is_deterministic_and_split(prepare_mod):
    a_train, a_val = prepare_mod.offline_documents(2_000_000)
    b_train, b_val = prepare_mod.offline_documents(2_000_000)
    assert (a_train, a_val) == (b_train, b_val)
    assert a_train and a_val and not set(a_val) & set(a_train)


# --- tokenizer and dataloader -----------------------------------------------------------------


def _original_token_bytes(enc, special: set[str]) -> list[int]:
    """The original prepare.py's rule, written independently: decode each id to a string
    (tiktoken replaces partial UTF-8), special tokens 0, else the UTF-8 length of the string."""
    out = []
    for i in range(enc.n_vocab):
        s = enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")
        out.append(0 if s in special else len(s.encode("utf-8")))
    return out


def test_tokenizer_round_trips_and_token_bytes_follow_the_original_rule(prepare_mod):
    tok = prepare_mod.Tokenizer.from_directory()
    assert tok.get_vocab_size() == prepare_mod.SCALES["cpu"].vocab_size
    token_bytes = prepare_mod.get_token_bytes()
    assert token_bytes.tolist() == _original_token_bytes(tok.enc, set(prepare_mod.SPECIAL_TOKENS))
    for text in ["def f(x):\n    return x ** 2\n", "Unicode: \u4f60\u597d, caf\u00e9 \u2603", ""]:
        assert tok.decode(tok.encode(text)) == text
    ascii_text = "def f(x):\n    return x ** 2\n"
    assert int(token_bytes[tok.encode(ascii_text)].sum()) == len(ascii_text)
    bos = tok.get_bos_token_id()
    assert int(token_bytes[bos]) == 0
    assert tok.encode("x", prepend=bos)[0] == bos


def test_partial_utf8_tokens_count_as_replacement_characters(prepare_mod):
    """On a vocabulary with partial-UTF-8 tokens the original counts U+FFFD (3 bytes) per
    invalid piece; the true-byte table counts the raw bytes. Both against independent code."""
    import tiktoken
    ranks = {bytes([b]): b for b in range(256)}
    for extra in ("\u4f60".encode()[:2], "\u00e9".encode(), b"ab"):
        ranks[extra] = len(ranks)
    special = {name: len(ranks) + i for i, name in enumerate(prepare_mod.SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="t", pat_str=prepare_mod.SPLIT_PATTERN, mergeable_ranks=ranks,
                            special_tokens=special)
    tok = prepare_mod.Tokenizer(enc)
    table = prepare_mod.token_bytes_table(tok)
    raw = prepare_mod.token_raw_bytes_table(tok)
    assert table.tolist() == _original_token_bytes(enc, set(special))
    assert table[0xE4] == 3 and raw[0xE4] == 1           # a lead byte alone: U+FFFD
    assert table[ranks["\u4f60".encode()[:2]]] == 3       # two of three bytes: one U+FFFD
    assert table[ranks["\u00e9".encode()]] == 2           # a whole character: its bytes
    text = "\u4f60\u597d caf\u00e9 \u2603 ab"
    ids = enc.encode_ordinary(text)
    assert int(raw[ids].sum()) == len(text.encode())
    assert int(table[ids].sum()) > len(text.encode())


def test_pack_rows_are_bos_aligned_full_and_best_fit(prepare_mod):
    bos = 0
    lengths = [5, 9, 3, 17, 2, 8, 30, 4, 6, 11] * 4
    docs = [[bos] + [i + 1] * (n - 1) for i, n in enumerate(lengths)]
    batches = iter([(docs[k:k + 3], 1) for k in range(0, len(docs), 3)])
    rows = [r for r, _ in prepare_mod.pack_rows(batches, 2, 15, buffer_size=8)]
    assert rows
    for batch in rows:
        assert batch.shape == (2, 16)
        assert (batch[:, 0] == bos).all()  # every row starts at a document's start
        for row in batch.tolist():
            # each token belongs to some document: no padding anywhere
            assert all(t == bos or 1 <= t <= len(docs) for t in row)
    # the buffer is topped up a batch at a time to at least 8 (here 9 documents, 0..8); best
    # fit: the longest that fits 16 (9), the longest that fits the 7 left (6), then the
    # shortest cropped to the last slot
    assert rows[0][0].tolist() == docs[1] + docs[8] + docs[4][:1]


def test_train_dataloader_yields_shifted_bos_rows(prepare_mod):
    tok = prepare_mod.Tokenizer.from_directory()
    loader = prepare_mod.make_dataloader(tok, 4, 64, "train", device="cpu")
    for _ in range(3):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (4, 64)
        assert (x[:, 0] == tok.get_bos_token_id()).all()
        assert (x[:, 1:] == y[:, :-1]).all()
        assert int(x.min()) >= 0 and int(x.max()) < tok.get_vocab_size()


# --- the evaluator -----------------------------------------------------------------------------


def test_evaluation_of_trained_model_beats_uniform(trained):
    _, m = trained
    assert math.isfinite(m["val_bpb"])
    assert m["val_bpb"] < 0.8 * m["uniform_bpb"]
    assert m["num_steps"] > 10 and m["peak_vram_mb"] > 0
    assert m["eval_sandboxed"] == (1 if shutil.which("bwrap") else 0)


def test_causality_check_rejects_model_that_sees_future_tokens(trained, cache, tmp_path):
    src, _ = trained
    work = shutil.copytree(src, tmp_path / "peek")
    code = (work / "train.py").read_text()
    assert "is_causal=True" in code
    (work / "train.py").write_text(code.replace("is_causal=True", "is_causal=False"))
    r = _run(["prepare.py", "--evaluate"], work, _env(cache))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not causal" in r.stdout
    assert "val_bpb" not in _metrics(r.stdout)


def test_train_py_printing_val_bpb_cannot_change_the_evaluated_metric(trained, cache, tmp_path):
    src, honest = trained
    work = shutil.copytree(src, tmp_path / "liar")
    code = (work / "train.py").read_text()
    cheat = ("import atexit as _ae, os as _os, sys as _sys\n"
             "print('val_bpb: 0.001', flush=True)\n"
             "_os.write(1, b'val_bpb: 0.001\\n')\n"
             "_sys.__stdout__.write('val_bpb: 0.001\\n')\n"
             "_ae.register(lambda: _os.write(1, b'val_bpb: 0.001\\n'))\n")
    (work / "train.py").write_text(code.replace("\nimport gc", "\n" + cheat + "import gc", 1))
    r = _run(["prepare.py", "--evaluate"], work, _env(cache))
    assert r.returncode == 0, r.stdout + r.stderr
    m = _metrics(r.stdout)
    assert m["val_bpb"] == honest["val_bpb"]
    assert "0.001" not in r.stdout


def test_evaluation_refuses_changed_pinned_rows(trained, cache, tmp_path):
    src, _ = trained
    bad_cache = shutil.copytree(cache, tmp_path / "cache")
    rows_file = next((bad_cache / "nanochat" / "eval").glob("*/eval_rows.npy"))
    import numpy as np
    rows = np.load(rows_file)
    rows[:, 1:] = rows[:, :1]  # every target becomes BOS... if the pin were not checked
    np.save(rows_file, rows)
    r = _run(["prepare.py", "--evaluate"], src, _env(bad_cache))
    assert r.returncode == 1
    assert "eval_rows.npy differs from the one pinned" in r.stdout
    assert "val_bpb" not in _metrics(r.stdout)


# --- the holdout split (the Goodhart guard) ----------------------------------------------------


def test_offline_holdout_slice_is_disjoint_from_training_and_validation(prepare_mod):
    train, val = prepare_mod.offline_documents(2_000_000)
    holdout = prepare_mod.offline_holdout_documents(2_000_000)
    assert holdout and holdout == prepare_mod.offline_holdout_documents(2_000_000)
    assert not set(holdout) & set(train) and not set(holdout) & set(val)


def test_climbmix_holdout_shard_is_downloaded_and_pinned_by_sha256(prepare_mod, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _write_shard(served / "shard_06541.parquet", 20, "holdout")
    server = _FlakyServer(served, truncate_first={"shard_06541.parquet"})
    root = tmp_path / "holdout"
    try:
        path = prepare_mod.fetch_holdout_shard(root, base_url=server.url, backoff=0.01)
        assert path.name == "shard_06541.parquet" and pq.read_table(path).num_rows == 20
        pins = json.loads((root / "pins.json").read_text())
        import hashlib
        assert pins == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
        # a different shard under the same name (a mirror, a re-download) is refused
        path.unlink()
        _write_shard(served / "shard_06541.parquet", 20, "other")
        with pytest.raises(prepare_mod.EvalFailure, match="sha256 mismatch"):
            prepare_mod.fetch_holdout_shard(root, base_url=server.url, backoff=0.01)
    finally:
        server.close()


def test_holdout_scores_the_model_by_the_validation_rule_on_its_own_rows(trained, cache,
                                                                       tmp_path):
    src, honest = trained
    hold = tmp_path / "holdout"
    env = _env(cache, AUTORESEARCH_HOLDOUT=str(hold))
    r = _run(["prepare.py", "--holdout-setup"], src, env)
    assert r.returncode == 0, r.stdout + r.stderr
    ev = _run(["prepare.py", "--evaluate", "--holdout"], src, env)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    m = _metrics(ev.stdout)
    # a real score of the same model, on other rows: not the validation figure
    assert math.isfinite(m["val_bpb"]) and m["val_bpb"] < 0.8 * m["uniform_bpb"]
    assert m["val_bpb"] != honest["val_bpb"]
    assert "holdout offline_holdout.parquet" in ev.stdout
    import numpy as np
    rows_file = next(hold.glob("nanochat/eval-*/eval_rows.npy"))
    val_rows = np.load(next((cache / "nanochat" / "eval").glob("*/eval_rows.npy")))
    assert np.load(rows_file).shape == val_rows.shape
    # without the folder the harness mounts for the holdout step there is no holdout score
    no = _run(["prepare.py", "--evaluate", "--holdout"], src, _env(cache))
    assert no.returncode == 1 and "AUTORESEARCH_HOLDOUT is not set" in no.stdout
    # and the pinned holdout rows cannot be changed under it
    rows = np.load(rows_file)
    rows[:, 1:] = rows[:, :1]
    np.save(rows_file, rows)
    bad = _run(["prepare.py", "--evaluate", "--holdout"], src, env)
    assert bad.returncode == 1 and "differs from the one pinned" in bad.stdout


def _original_eval_rows(val_path: Path, tok, n_rows: int, T: int) -> list[list[int]]:
    """The original's validation loader, written independently: row groups in batches of 128
    documents, endless; the buffer refilled (a batch at a time) while under 1000 documents;
    the longest document that fits, else the shortest cropped."""
    bos = tok.get_bos_token_id()

    def batches():
        while True:
            pf = pq.ParquetFile(val_path)
            for g in range(pf.num_row_groups):
                texts = pf.read_row_group(g).column("text").to_pylist()
                for i in range(0, len(texts), 128):
                    yield [[bos] + ids for ids in tok.enc.encode_ordinary_batch(texts[i:i + 128])]

    it, buf, out = batches(), [], []
    for _ in range(n_rows):
        row = []
        while len(row) < T + 1:
            while len(buf) < 1000:
                buf.extend(next(it))
            room = T + 1 - len(row)
            fits = [i for i, d in enumerate(buf) if len(d) <= room]
            if fits:
                i = max(fits, key=lambda i: (len(buf[i]), -i))
                row += buf.pop(i)
            else:
                i = min(range(len(buf)), key=lambda i: (len(buf[i]), i))
                row += buf.pop(i)[:room]
        out.append(row)
    return out


def _shared(a, b) -> int:
    import numpy as np
    return int(np.argmin(np.append(a == b, False)))


def test_longest_shared_prefix_finds_each_rows_closest_other_row(prepare_mod):
    import numpy as np
    x = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 7, 7], [1, 2, 3, 5], [7, 7, 7, 7]])
    assert prepare_mod.longest_shared_prefix(x).tolist() == [3, 2, 4, 3, 4]
    assert prepare_mod.longest_shared_prefix(x[:1]).tolist() == [0]


def test_causality_probes_diverge_past_every_prefix_another_input_shares(prepare_mod):
    """On the pinned rows (made distinct, as the evaluator scores them) and on rows built to
    share long prefixes: a probe diverges from its source inside the row, and no other row or
    probe agrees with the source or the probe beyond that point, so neither host has seen the
    other's next token after the same prefix. A row sharing its prefix up to its last tokens
    is never probed."""
    import numpy as np
    manifest = json.loads(prepare_mod.manifest_path().read_text())
    tok, _, pinned, pool = prepare_mod._verify_inputs(manifest, prepare_mod.PROFILE)
    bos = tok.get_bos_token_id()
    T1 = pinned.shape[1]
    built = np.unique(pinned, axis=0)[:6].copy()
    built[1, :200] = built[0, :200]          # a long shared prefix, then a document start
    built[1, 200] = bos
    built[2, :T1 - 2] = built[3, :T1 - 2]    # shared up to the last tokens: unprobeable
    for rows, n_probe in ((np.unique(pinned, axis=0), 8), (np.unique(built, axis=0), 6)):
        for seed in range(30):
            sources, probes, cuts = prepare_mod.choose_probes(rows, pool,
                                                              np.random.default_rng(seed),
                                                              bos, n_probe)
            assert 0 < len(sources) <= n_probe and len(set(sources)) == len(sources)
            inputs = [r[:-1] for r in rows] + [p[:-1] for p in probes]
            for k, (s, d) in enumerate(zip(sources, cuts, strict=True)):
                source, probe = rows[s][:-1], probes[k][:-1]
                assert _shared(source, probe) == d < T1 - 1
                for j, other in enumerate(inputs):
                    if j not in (s, len(rows) + k):
                        assert _shared(other, source) <= d and _shared(other, probe) <= d
    one = np.unique(built, axis=0)
    twins = {i for i in range(len(one)) if any(
        _shared(one[i][:-1], one[j][:-1]) >= T1 - 3 for j in range(len(one)) if j != i)}
    assert len(twins) == 2
    for seed in range(30):
        sources, _, _ = prepare_mod.choose_probes(one, pool, np.random.default_rng(seed), bos, 6)
        assert not twins & set(sources) and len(sources) == len(one) - 2


def test_val_bpb_is_the_original_metric_by_an_independent_computation(trained, cache,
                                                                       prepare_mod):
    """Rows packed by the original's rule, logits of the saved model computed here, bytes by
    the original's rule: the evaluator's val_bpb agrees."""
    import numpy as np
    import torch
    work, m = trained
    tok = prepare_mod.Tokenizer.from_directory()
    scale = prepare_mod.SCALES["cpu"]
    _, val_path = prepare_mod.split_files("offline")
    rows = _original_eval_rows(val_path, tok, scale.eval_tokens // scale.seq_len, scale.seq_len)
    pinned = np.load(next((cache / "nanochat" / "eval").glob("*/eval_rows.npy")))
    assert pinned.tolist() == rows
    nbytes = torch.tensor(_original_token_bytes(tok.enc, set(prepare_mod.SPECIAL_TOKENS)))
    sys.path.insert(0, str(work))
    try:
        import train
        info = json.loads((work / "model.json").read_text())
        model = train.GPT(train.GPTConfig(**info["config"]))
        model.load_state_dict(torch.load(work / "model.pt", weights_only=True))
        model.eval()
        nats, total = 0.0, 0
        with torch.no_grad():
            r = torch.tensor(rows)
            logits = model(r[:, :-1]).double()
            y = r[:, 1:]
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, y[..., None])[..., 0]
            nats = float((nll * (nbytes[y] > 0)).sum())
            total = int(nbytes[y].sum())
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("train", None)
        sys.modules.pop("prepare", None)
    expected = nats / (math.log(2) * total)
    assert abs(m["val_bpb"] - expected) < 2e-6, (m["val_bpb"], expected)
    assert m["causal_probes"] >= 4 and m["causal_max_diff"] <= 1e-3


# --- end to end through the CLI ---------------------------------------------------------------


@pytest.mark.slow
def test_cli_run_records_real_val_bpb_and_ignores_printed_one(tmp_path):
    """`autoresearch run --max-experiments 2 --budget 20` on the CPU profile: the baseline
    learns (val_bpb well below uniform), and a proposal whose train.py prints `val_bpb: 0.001`
    is recorded with its evaluated metric, not the printed one."""
    work = tmp_path / "target"
    env = _env(tmp_path / "cache")
    env.pop("AUTORESEARCH_SEED")
    init = subprocess.run([sys.executable, "-m", "autoresearch.cli", "init", "--template",
                           "nanochat", str(work)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (work / "prepare.py").exists() and (work / "autoresearch.toml").exists()
    code = (work / "train.py").read_text()
    liar = code.replace("    main()\n", "    main()\n    print('val_bpb: 0.001')\n")
    assert liar != code
    script = tmp_path / "proposals.jsonl"
    script.write_text(json.dumps({"description": "print a fake val_bpb",
                                  "files": {"train.py": liar}}) + "\n")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--max-experiments", "2",
                        "--budget", "20", "--agent", f"script:{script}", "--policy", "greedy"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    took = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ex = subprocess.run([sys.executable, "-m", "autoresearch.cli", "export", "--format", "jsonl"],
                        cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert ex.returncode == 0, ex.stderr
    rows = [json.loads(line) for line in ex.stdout.splitlines() if line.strip()]
    assert len(rows) == 2
    metrics = [row["metric"] for row in rows]
    assert all(m is not None and math.isfinite(m) for m in metrics), rows
    # the untrained reference, printed by the evaluator: a model that knows nothing scores
    # log2(vocab) bits per token (the initial lm_head is near zero, so logits are near uniform)
    uniform = rows[0]["metrics"]["uniform_bpb"]
    assert uniform > 2.0
    assert rows[1]["metrics"]["uniform_bpb"] == uniform
    assert metrics[0] < 0.8 * uniform, (metrics, uniform)
    assert metrics[1] > 0.1 and metrics[1] != 0.001
    # the holdout step scored the baseline on the holdout shard, by the same rule
    hold = rows[0]["decision"]["holdout"]
    assert math.isfinite(hold) and hold < 0.8 * uniform and hold != metrics[0]
    print(f"end-to-end run took {took:.0f}s; val_bpb {metrics}, uniform {uniform:.3f}")


# --- compilation --------------------------------------------------------------------------------

GRAPH_PROBE = """
import json, torch, torch._dynamo as dynamo
import train
cfg = train.GPTConfig(sequence_len=64, vocab_size=256, n_layer=4, n_head=2, n_kv_head=2,
                      n_embd=64, window_pattern="SSSL")
model = train.GPT(cfg)
model.init_weights()
x = torch.randint(0, 256, (2, 64))
explained = dynamo.explain(model)(x)
compiles = []
def backend(gm, example_inputs):
    compiles.append(len(gm.graph.nodes))
    return gm.forward
dynamo.reset()
fwd = torch.compile(model, backend=backend, dynamic=False)
for seed in range(4):  # warm-up, then new data of the same shape
    fwd(torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(seed)))
print(json.dumps({"graphs": explained.graph_count, "breaks": explained.graph_break_count,
                  "reasons": [str(b.reason) for b in explained.break_reasons],
                  "compiles": len(compiles), "windows": model.windows}))
"""


def test_compiled_forward_has_one_graph_no_breaks_and_no_recompiles(tmp_path):
    work = _copy_template(tmp_path / "work")
    r = _run(["-c", GRAPH_PROBE], work, _env(tmp_path / "cache"))
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["windows"] == [32, 32, 32, 64]  # three windowed layers and a full one
    assert (got["graphs"], got["breaks"], got["reasons"]) == (1, 0, [])
    assert got["compiles"] == 1


# --- the GPU check's CPU dry run ----------------------------------------------------------------


def test_gpu_check_dry_run_reports_every_figure(tmp_path):
    script = Path(autoresearch.__file__).parents[2] / "bench" / "gpu_check.py"
    if not script.exists():
        pytest.skip("bench/ is not shipped with the installed package")
    out = tmp_path / "dry.json"
    r = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(out),
                        "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                       timeout=600, env=_env(tmp_path / "unused"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["mode"] == "dry-run" and result["data"] == "offline"
    assert result["preflight"]["graph_breaks"] == 0 and result["preflight"]["profile"] == "cpu"
    figures = {c["figure"]: c for c in result["checks"]}
    assert set(figures) == {"tokens/s (steady)", "MFU %", "peak VRAM MB", "steps",
                            "graph breaks", "evaluate wall s", "val_bpb"}
    assert all(c["verdict"] == "INFO" for c in figures.values())  # no GPU: nothing judged
    assert figures["val_bpb"]["value"] == result["evaluate"]["val_bpb"] > 0
    assert result["train"]["num_steps"] > 10 and result["evaluate_wall_seconds"] > 0
    assert "versions" in result and result["versions"]["torch"]
    assert "PASS: figures written to" in r.stdout
