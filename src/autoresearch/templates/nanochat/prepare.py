"""Locked half of the nanochat target: data, tokenizer, dataloader and the fixed evaluation.

    python prepare.py                        # one-time setup: data + BPE tokenizer into the cache
    python prepare.py --evaluate             # score train.py's saved model (the metric)
    python prepare.py --holdout-setup        # the holdout split into $AUTORESEARCH_HOLDOUT
    python prepare.py --evaluate --holdout   # the same score on the holdout split

The agent edits train.py only. Everything that defines the metric lives here: the platform
profile (sequence length, evaluation tokens, vocabulary), the pinned validation set and the
bits-per-byte computation, which takes logits from the model and computes the loss itself.

The holdout split (the run's Goodhart guard) is a second pinned set of documents the agent's
code never reads: ClimbMix's shard 6541 (the validation shard is 6542), or a slice of the
offline corpus disjoint from its training and validation files. It lives in
$AUTORESEARCH_HOLDOUT, which only the harness's holdout step can read, pinned by SHA-256 when it
is first prepared; `--holdout` scores it by exactly the validation rule.

Environment (all optional):
    AUTORESEARCH_CACHE       cache root (default ~/.cache/autoresearch); data under nanochat/
    AUTORESEARCH_PROFILE     cuda | mps | cpu (default: detected)
    AUTORESEARCH_DATA        climbmix | tinystories | offline (default: climbmix when
                             huggingface.co answers within 3 s, else offline)
    AUTORESEARCH_DATA_URL    base URL of a mirror of the dataset files
    AUTORESEARCH_NUM_SHARDS  ClimbMix training shards to download (default: per profile)
    AUTORESEARCH_HOLDOUT     the holdout split's folder (set by the harness for holdout steps)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import os
import random
import re
import socket
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

# ---------------------------------------------------------------------------
# Constants and platform profiles (fixed: they define the metric)
# ---------------------------------------------------------------------------

TIME_BUDGET = 300            # seconds of training (AUTORESEARCH_BUDGET_SECONDS overrides)


@dataclass(frozen=True)
class Scale:
    """What the metric depends on: runs compare only within one scale."""
    name: str
    seq_len: int             # tokens per row, training and evaluation
    eval_tokens: int         # validation tokens scored per evaluation
    vocab_size: int          # BPE vocabulary, special tokens included
    tokenizer_chars: int     # characters of training text the BPE is trained on
    train_shards: int        # ClimbMix training shards downloaded by default
    offline_chars: int       # size cap of the offline corpus, characters


SCALES = {
    # the original's constants: MAX_SEQ_LEN 2048, EVAL_TOKENS 40 * 524288, vocab 8192
    "gpu": Scale("gpu", 2048, 40 * 524288, 8192, 1_000_000_000, 10, 1 << 62),
    # the original README's advice for small machines: shorter rows, smaller vocab, fewer tokens
    "mps": Scale("mps", 256, 2**17, 4096, 50_000_000, 2, 60_000_000),
    "cpu": Scale("cpu", 256, 2**15, 2048, 2_000_000, 1, 6_000_000),
}


@dataclass(frozen=True)
class Profile:
    """How this machine runs the scale: precision, attention, compilation, batch."""
    name: str
    scale: Scale
    device: str              # cuda | mps | cpu
    dtype: str               # autocast dtype: bfloat16 | float16 | float32 (no autocast)
    attention: str           # flex (windows by flex attention, full layers by SDPA) | sdpa
    compile: bool            # torch.compile the model and the optimizer steps
    device_batch: int        # rows per micro-step in train.py's baseline
    eval_batch: int          # rows per evaluation call
    peak_flops: float        # peak of this device at `dtype`, for MFU (0: not reported)
    threads: int             # CPU threads (0: PyTorch's default)
    reason: str              # why this profile (and thread count) was chosen

    @property
    def seq_len(self) -> int:
        return self.scale.seq_len

    @property
    def eval_tokens(self) -> int:
        return self.scale.eval_tokens

    @property
    def vocab_size(self) -> int:
        return self.scale.vocab_size

    @property
    def autocast(self) -> bool:
        return self.dtype != "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


PROFILE_NAMES = ("h100", "consumer", "legacy", "mps", "cpu")
# dense peak FLOPs at bf16/fp16 by device name (MFU is reported against the device's own peak)
PEAK_FLOPS = {"H200": 989.5e12, "H100": 989.5e12, "A100": 312e12, "A10": 125e12,
              "L40": 181e12, "4090": 165.2e12, "4080": 97.5e12, "3090": 71e12, "3080": 59.5e12,
              "A6000": 154.8e12, "V100": 125e12, "T4": 65e12}


def _peak_flops(device_name: str) -> float:
    for key, flops in PEAK_FLOPS.items():
        if key in device_name:
            return flops
    return 0.0


def _rows_for_memory(gib: float) -> int:
    """Rows of 2048 tokens per micro-step: the original's 128 rows use about 45 GB."""
    for need, rows in ((70, 128), (36, 64), (20, 32), (12, 16)):
        if gib >= need:
            return rows
    return 8


def _cpu_threads() -> tuple[int, str]:
    """Threads for the CPU profile. OpenMP threads spin while they wait for each other; on
    cores other jobs also use, that costs far more than it gains (one thread ran 4.6x faster
    than two on a loaded 2-core machine). So use the cores left idle by the current load."""
    explicit = os.environ.get("AUTORESEARCH_CPU_THREADS", "").strip()
    if explicit:
        return max(1, int(explicit)), "AUTORESEARCH_CPU_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = max(1, min(8, int(cores - load + 0.5)))
    return idle, f"{cores} cores, load {load:.1f}: threads = idle cores (at most 8)"


def make_profile(name: str) -> Profile:
    """The profile called `name`, sized for this machine's device. With
    AUTORESEARCH_NANOCHAT_COMPILE=0 nothing is compiled (the evaluator's model hosts)."""
    profile = _make_profile(name)
    if os.environ.get("AUTORESEARCH_NANOCHAT_COMPILE", "").strip() == "0":
        profile = replace(profile, compile=False)
    return profile


def _make_profile(name: str) -> Profile:
    if name in ("h100", "consumer", "legacy"):
        props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
        gib = props.total_memory / 2**30 if props else 80.0
        cap = (props.major, props.minor) if props else (9, 0)
        dev = props.name if props else "no CUDA device"
        where = f"{dev}, capability {cap[0]}.{cap[1]}, {gib:.0f} GiB"
        scale = SCALES["gpu"]
        if name == "legacy":  # before Ampere: no bf16, no flex attention
            dtype = "float16" if cap >= (7, 0) else "float32"
            return Profile(name, scale, "cuda", dtype, "sdpa", cap >= (7, 0),
                           _rows_for_memory(gib), 8, _peak_flops(dev), 0,
                           f"{where}: {dtype}, SDPA with precomputed window masks")
        rows = _rows_for_memory(gib)
        # AUTORESEARCH_NANOCHAT_ATTENTION=sdpa: masked SDPA for the windows where flex fails
        attn = os.environ.get("AUTORESEARCH_NANOCHAT_ATTENTION", "").strip().lower() or "flex"
        if attn not in ("flex", "sdpa"):
            sys.exit(f"AUTORESEARCH_NANOCHAT_ATTENTION={attn!r}: choose flex or sdpa")
        how = ("flex attention for windows" if attn == "flex" else "SDPA with window masks")
        if name == "h100":
            return Profile(name, scale, "cuda", "bfloat16", attn, True, max(rows, 64), 32,
                           _peak_flops(dev) or 989.5e12, 0,
                           f"{where}: bf16, {how}, SDPA for full layers")
        return Profile(name, scale, "cuda", "bfloat16", attn, True, rows, 8, _peak_flops(dev),
                       0, f"{where}: bf16, {how}, {rows} rows per micro-step with gradient "
                          f"accumulation")
    if name == "mps":
        return Profile(name, SCALES["mps"], "mps", "float32", "sdpa", False, 32, 16, 0.0, 0,
                       "Apple silicon: float32, SDPA, eager")
    if name == "cpu":
        threads, why = _cpu_threads()
        return Profile(name, SCALES["cpu"], "cpu", "float32", "sdpa", False, 16, 32, 0.0,
                       threads, f"CPU: float32, SDPA, eager; {threads} thread(s) ({why})")
    raise ValueError(name)


def detect_profile() -> Profile:
    """AUTORESEARCH_NANOCHAT_PROFILE (or AUTORESEARCH_PROFILE), else by device and memory:
    Ampere or newer with at least 36 GiB (A100, H100, H200) -> h100; smaller Ampere/Ada cards
    -> consumer; older CUDA cards -> legacy; Apple -> mps; else cpu."""
    name = (os.environ.get("AUTORESEARCH_NANOCHAT_PROFILE")
            or os.environ.get("AUTORESEARCH_PROFILE", "")).strip().lower()
    if name == "cuda":  # the name before profiles were split by device
        name = ""
    if not name:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            if props.major < 8:
                name = "legacy"
            else:
                name = "h100" if props.total_memory / 2**30 >= 36 else "consumer"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name not in PROFILE_NAMES:
        sys.exit(f"AUTORESEARCH_NANOCHAT_PROFILE={name!r}: choose one of "
                 f"{', '.join(PROFILE_NAMES)}")
    return make_profile(name)


PROFILE = detect_profile()
if PROFILE.threads:
    torch.set_num_threads(PROFILE.threads)
DEVICE = PROFILE.device
MAX_SEQ_LEN = PROFILE.seq_len
EVAL_TOKENS = PROFILE.eval_tokens
VOCAB_SIZE = PROFILE.vocab_size


def time_budget() -> float:
    """Seconds of training for this experiment (the harness sets AUTORESEARCH_BUDGET_SECONDS)."""
    return float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS") or TIME_BUDGET)


# GPT-4 style split, digits grouped by at most two
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]

# ---------------------------------------------------------------------------
# Where things live
# ---------------------------------------------------------------------------

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_LAST_SHARD = 6542                       # shard_06542.parquet is the last one
CLIMBMIX_VAL_SHARD = CLIMBMIX_LAST_SHARD         # pinned validation shard
CLIMBMIX_HOLDOUT_SHARD = CLIMBMIX_LAST_SHARD - 1  # pinned holdout shard (never trained on)
TINYSTORIES_URL = "https://huggingface.co/datasets/karpathy/tinystories-gpt4-clean/resolve/main"
TINYSTORIES_FILE = "tinystories_gpt4_clean.parquet"
TINYSTORIES_VAL_DOCS = 10_000                    # the last rows of the file are validation
SOURCES = ("climbmix", "tinystories", "offline")
OFFLINE_DOC_CHARS = 2000                         # stdlib files are cut into documents this long


def cache_root() -> Path:
    root = os.environ.get("AUTORESEARCH_CACHE") or os.path.join("~", ".cache", "autoresearch")
    return Path(root).expanduser() / "nanochat"


def data_dir(source: str) -> Path:
    return cache_root() / "data" / source


def tokenizer_dir(source: str, vocab_size: int = VOCAB_SIZE) -> Path:
    return cache_root() / "tokenizer" / f"{source}-{vocab_size}"


def manifest_path(profile: Profile = PROFILE) -> Path:
    return cache_root() / f"prepared-{profile.scale.name}.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)

# ---------------------------------------------------------------------------
# Downloads (retries with backoff; files appear atomically)
# ---------------------------------------------------------------------------


def download_file(url: str, dest: Path, attempts: int = 5, backoff: float = 2.0,
                  timeout: float = 30.0) -> bool:
    """Fetch url into dest; True on success. A partial file never takes dest's name."""
    if dest.exists():
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            pq.ParquetFile(tmp)  # a truncated body fails here, not at training time
            os.replace(tmp, dest)
            return True
        except (urllib.error.URLError, OSError, pa.ArrowException) as e:
            print(f"  attempt {attempt}/{attempts} for {dest.name} failed: {e}", flush=True)
            tmp.unlink(missing_ok=True)
            if isinstance(e, urllib.error.HTTPError) and e.code == 404:
                return False
            if attempt < attempts:
                time.sleep(backoff ** attempt if backoff > 1 else backoff)
    return False


def download_climbmix(num_shards: int, base_url: str | None = None, workers: int = 8,
                      backoff: float = 2.0) -> bool:
    """Training shards 0..num_shards-1 plus the pinned validation shard."""
    base_url = (base_url or os.environ.get("AUTORESEARCH_DATA_URL") or CLIMBMIX_URL).rstrip("/")
    ids = list(range(min(num_shards, CLIMBMIX_LAST_SHARD)))
    ids.append(CLIMBMIX_VAL_SHARD)
    out = data_dir("climbmix")
    todo = [i for i in ids if not (out / shard_name(i)).exists()]
    print(f"Data: climbmix, {len(ids) - len(todo)}/{len(ids)} shards cached in {out}", flush=True)
    if todo:
        with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            ok = list(pool.map(lambda i: download_file(f"{base_url}/{shard_name(i)}",
                                                       out / shard_name(i), backoff=backoff), todo))
        if not all(ok):
            print(f"Data: {ok.count(False)} shard(s) failed to download", flush=True)
            return False
    return True


def download_tinystories(base_url: str | None = None, backoff: float = 2.0) -> bool:
    """One parquet file; its last TINYSTORIES_VAL_DOCS rows become the validation file."""
    base_url = (base_url or os.environ.get("AUTORESEARCH_DATA_URL") or TINYSTORIES_URL).rstrip("/")
    out = data_dir("tinystories")
    if (out / "val.parquet").exists():
        print(f"Data: tinystories cached in {out}", flush=True)
        return True
    raw = out / "raw" / TINYSTORIES_FILE
    if not download_file(f"{base_url}/{TINYSTORIES_FILE}", raw, backoff=backoff):
        return False
    texts = pq.read_table(raw, columns=["text"]).column("text").to_pylist()
    n_val = min(TINYSTORIES_VAL_DOCS, len(texts) // 10)
    _write_split(out, texts[:-n_val], texts[-n_val:])
    return True


def _write_split(out: Path, train: list[str], val: list[str], docs_per_shard: int = 50_000) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(train), docs_per_shard):
        table = pa.table({"text": train[k:k + docs_per_shard]})
        tmp = out / f"train_{k // docs_per_shard:05d}.parquet.tmp"
        pq.write_table(table, tmp, row_group_size=1024)
        os.replace(tmp, out / f"train_{k // docs_per_shard:05d}.parquet")
    tmp = out / "val.parquet.tmp"
    pq.write_table(pa.table({"text": val}), tmp, row_group_size=1024)
    os.replace(tmp, out / "val.parquet")  # written last: its presence means the split is complete


def offline_documents(max_chars: int) -> tuple[list[str], list[str]]:
    """The standard library's own .py files, cut into documents: text every Python carries.

    Deterministic for a given interpreter: files in sorted order, ~5% of files (chosen by a
    hash of their path) are validation, another ~5% the holdout (`offline_holdout_documents`,
    never trained on), training documents shuffled with a fixed seed.
    """
    train, val, _ = _offline_split(max_chars)
    return train, val


def offline_holdout_documents(max_chars: int) -> list[str]:
    """The offline corpus's holdout slice: files disjoint from training and validation."""
    return _offline_split(max_chars)[2]


def _offline_split(max_chars: int) -> tuple[list[str], list[str], list[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in skip]  # never descend into installed packages
        files.extend(Path(root) / n for n in names if n.endswith(".py"))
    files.sort()
    train, val, holdout, total = [], [], [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        rel = path.relative_to(stdlib).as_posix()
        docs = _chunk(text, OFFLINE_DOC_CHARS)
        split = zlib.crc32(rel.encode()) % 20
        (val if split == 0 else holdout if split == 1 else train).extend(docs)
        total += len(text)
        if total >= max_chars:
            break
    random.Random(1337).shuffle(train)
    return train, val, holdout


def _chunk(text: str, size: int) -> list[str]:
    """Cut at line ends into pieces of about `size` characters."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if cur and "".join(cur).strip():
        out.append("".join(cur))
    return out


OFFLINE_SPLIT = "split-v2.json"   # marks a corpus whose training files exclude the holdout slice


def prepare_offline(profile: Profile) -> None:
    out = data_dir("offline")
    if (out / "val.parquet").exists() and (out / OFFLINE_SPLIT).exists():
        print(f"Data: offline corpus cached in {out}", flush=True)
        return
    train, val = offline_documents(profile.scale.offline_chars)
    for old in out.glob("*.parquet"):   # an older corpus trained on the holdout slice too
        old.unlink()
    _write_split(out, train, val)
    _atomic_write(out / OFFLINE_SPLIT, b'{"val": "crc32 % 20 == 0", "holdout": "crc32 % 20 == 1"}')
    print(f"Data: offline corpus from the standard library: {len(train)} train and "
          f"{len(val)} val documents in {out}", flush=True)


def online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False

# ---------------------------------------------------------------------------
# Document access
# ---------------------------------------------------------------------------


def split_files(source: str) -> tuple[list[Path], Path]:
    """(training parquet files, the validation parquet file) of a prepared source."""
    d = data_dir(source)
    if source == "climbmix":
        val = d / shard_name(CLIMBMIX_VAL_SHARD)
        train = sorted(p for p in d.glob("shard_*.parquet") if p != val)
    else:
        val = d / "val.parquet"
        train = sorted(d.glob("train_*.parquet"))
    if not val.exists() or not train:
        sys.exit(f"no prepared {source} data in {d}: run `python prepare.py` first")
    return train, val


def iter_texts(paths: list[Path], cycle: bool, doc_cap: int | None = None):
    """Yield (text, epoch); epochs repeat forever when cycle is set."""
    epoch = 1
    while True:
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                    yield (text[:doc_cap] if doc_cap else text), epoch
        if not cycle:
            return
        epoch += 1

# ---------------------------------------------------------------------------
# Tokenizer: BPE (rustbpe, or a pure-Python trainer without it), used through tiktoken
# ---------------------------------------------------------------------------

TOKENIZER_FILE = "tokenizer.json"    # pattern, special tokens, ranks (base64): no pickle
TOKEN_BYTES_FILE = "token_bytes.pt"  # int32 bytes per token, the original's rule


class Tokenizer:
    """tiktoken encoding plus the BOS id; documents are encoded with BOS in front."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, directory: Path | None = None) -> Tokenizer:
        directory = Path(directory or tokenizer_dir(data_source()))
        return cls.from_bytes((directory / TOKENIZER_FILE).read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Tokenizer:
        import tiktoken
        spec = json.loads(data)
        ranks = {base64.b64decode(tok): i for i, tok in enumerate(spec["ranks"])}
        enc = tiktoken.Encoding(name="nanochat-bpe", pat_str=spec["pattern"],
                                mergeable_ranks=ranks, special_tokens=spec["special"])
        return cls(enc)

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend: int | None = None, num_threads: int = 8):
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ([prepend] if prepend is not None else []) + ids
        rows = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
        return [([prepend] if prepend is not None else []) + r for r in rows]

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)


def token_bytes_table(tok: Tokenizer) -> torch.Tensor:
    """The original's bytes per token: special tokens 0, every other token the UTF-8 length
    of its *decoded string*, so a token holding part of a character counts as U+FFFD (3 bytes
    per invalid sequence), not as its raw bytes."""
    special = set(SPECIAL_TOKENS)
    out = []
    for i in range(tok.get_vocab_size()):
        text = tok.enc.decode([i])
        out.append(0 if text in special else len(text.encode("utf-8")))
    return torch.tensor(out, dtype=torch.int32)


def token_raw_bytes_table(tok: Tokenizer) -> torch.Tensor:
    """Bytes each token stands for in the text (0 for special tokens): the true-byte count."""
    special = set(tok.enc.special_tokens_set)
    return torch.tensor([0 if tok.enc.decode([i]) in special
                         else len(tok.enc.decode_single_token_bytes(i))
                         for i in range(tok.get_vocab_size())], dtype=torch.int32)


def train_bpe_python(texts, vocab_size: int, pattern: str) -> list[bytes]:
    """Byte-level BPE in pure Python, for machines without rustbpe: split by `pattern`, count
    the chunks, then merge the most frequent adjacent pair `vocab_size - 256` times, updating
    pair counts incrementally (only the words holding the merged pair are touched). Ties go to
    the smallest pair. Returns the tokens in rank order (the 256 bytes first)."""
    import heapq
    from collections import Counter, defaultdict

    import regex
    pat = regex.compile(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(pat.findall(text))
    words = [list(w.encode("utf-8")) for w in counts]
    freqs = list(counts.values())
    vocab = [bytes([b]) for b in range(256)]
    pairs: dict = defaultdict(int)
    where: dict = defaultdict(set)
    for wi, w in enumerate(words):
        for a, b in zip(w, w[1:], strict=False):
            pairs[a, b] += freqs[wi]
            where[a, b].add(wi)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry
        new = len(vocab)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        changed = set()
        for wi in where.pop(pair, ()):
            w, f = words[wi], freqs[wi]
            for a, b in zip(w, w[1:], strict=False):
                pairs[a, b] -= f
                changed.add((a, b))
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == pair[0] and w[i + 1] == pair[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for a, b in zip(out, out[1:], strict=False):
                pairs[a, b] += f
                where[a, b].add(wi)
                changed.add((a, b))
        pairs.pop(pair, None)
        for p in changed:
            c = pairs.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pairs.pop(p, None)
    return vocab


def train_tokenizer(source: str, profile: Profile = PROFILE) -> None:
    out = tokenizer_dir(source, profile.vocab_size)
    if (out / TOKENIZER_FILE).exists() and (out / TOKEN_BYTES_FILE).exists():
        print(f"Tokenizer: cached in {out}", flush=True)
        return
    train_paths, _ = split_files(source)
    n_merge = profile.vocab_size - len(SPECIAL_TOKENS)
    try:
        import rustbpe
        trainer, budget = "rustbpe", profile.scale.tokenizer_chars
    except ImportError:  # a pure-Python trainer is fine on the small offline corpus
        rustbpe, trainer = None, "python (rustbpe is not installed)"
        budget = min(profile.scale.tokenizer_chars, int(os.environ.get("AUTORESEARCH_BPE_CHARS")
                                                  or 20_000_000))

    def texts():
        n = 0
        for text, _ in iter_texts(train_paths, cycle=False, doc_cap=10_000):
            yield text
            n += len(text)
            if n >= budget:
                return

    t0 = time.time()
    if rustbpe is not None:
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(texts(), n_merge, pattern=SPLIT_PATTERN)
        ranked = sorted(((bytes(k), v) for k, v in bpe.get_mergeable_ranks()),
                        key=lambda kv: kv[1])
        assert [v for _, v in ranked] == list(range(len(ranked)))
        tokens, pattern = [k for k, _ in ranked], bpe.get_pattern()
    else:
        tokens, pattern = train_bpe_python(texts(), n_merge, SPLIT_PATTERN), SPLIT_PATTERN
    special = {name: len(tokens) + i for i, name in enumerate(SPECIAL_TOKENS)}
    spec = {"pattern": pattern, "special": special,
            "ranks": [base64.b64encode(t).decode() for t in tokens]}
    data = json.dumps(spec).encode()
    tok = Tokenizer.from_bytes(data)
    sample = "Hello world! Numbers: 123. Unicode: \u4f60\u597d"
    assert tok.decode(tok.encode(sample)) == sample, "tokenizer round trip failed"
    buf = io.BytesIO()
    torch.save(token_bytes_table(tok), buf)
    _atomic_write(out / TOKEN_BYTES_FILE, buf.getvalue())
    _atomic_write(out / TOKENIZER_FILE, data)  # last: its presence means the pair is complete
    print(f"Tokenizer: vocab {tok.get_vocab_size()} trained by {trainer} on "
          f"{budget:,} characters at most in {time.time() - t0:.1f}s, saved to {out}", flush=True)


def get_token_bytes(device: str = "cpu") -> torch.Tensor:
    return torch.load(tokenizer_dir(data_source()) / TOKEN_BYTES_FILE, map_location=device,
                      weights_only=True)

# ---------------------------------------------------------------------------
# Dataloader: the original's BOS-aligned best-fit packing, no padding
# ---------------------------------------------------------------------------

DOC_BATCH = 128      # documents per tokenizer call; the buffer is refilled a batch at a time
PACK_BUFFER = 1000   # documents buffered for best fit (the original's, training and evaluation)


def doc_batches(paths: list[Path], cycle: bool):
    """Yield (list of texts, epoch): each parquet row group cut into batches of DOC_BATCH, the
    files in order, forever when cycle is set (the original's `_document_batches`)."""
    epoch = 1
    while True:
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(texts), DOC_BATCH):
                    yield texts[i:i + DOC_BATCH], epoch
        if not cycle:
            return
        epoch += 1


def token_batches(tokenizer: Tokenizer, batches):
    """(list of BOS-prefixed token lists, epoch) for each (list of texts, epoch)."""
    bos = tokenizer.get_bos_token_id()
    for texts, epoch in batches:
        yield tokenizer.encode(texts, prepend=bos), epoch


def pack_rows(batches, B: int, T: int, buffer_size: int = PACK_BUFFER, buffer=None):
    """Yield (rows[B, T+1] int64, epoch) from an iterator of (list of token lists, epoch).

    The original's rule: before each placement the buffer is topped up, a whole batch at a
    time, to at least `buffer_size` documents; each slot takes the longest buffered document
    that fits (the first one among equals); when none fits, the shortest (the first among
    equals) is cropped to fill the row exactly, so no token is padding. Every row starts at a
    document's BOS. Ends when the batches run out. `buffer` (a list) is used and left holding
    the documents never placed.
    """
    capacity = T + 1
    buf: list[list[int]] = [] if buffer is None else buffer
    epoch = 1
    exhausted = False
    while True:
        rows = torch.empty((B, capacity), dtype=torch.long)
        for r in range(B):
            pos = 0
            while pos < capacity:
                while not exhausted and len(buf) < buffer_size:
                    try:
                        docs, epoch = next(batches)
                        buf.extend(docs)
                    except StopIteration:
                        exhausted = True
                if not buf:
                    return
                room = capacity - pos
                best, best_len = -1, 0
                for i, d in enumerate(buf):
                    n = len(d)
                    if best_len < n <= room:
                        best, best_len = i, n
                if best >= 0:
                    d = buf.pop(best)
                    rows[r, pos:pos + len(d)] = torch.tensor(d, dtype=torch.long)
                    pos += len(d)
                else:
                    i = min(range(len(buf)), key=lambda j: len(buf[j]))
                    d = buf.pop(i)
                    rows[r, pos:] = torch.tensor(d[:room], dtype=torch.long)
                    pos = capacity
        yield rows, epoch


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, device: str = DEVICE):
    """Endless (inputs, targets, epoch) batches of the training split. The validation split is
    the evaluator's alone."""
    if split != "train":
        raise ValueError("only the training split is served; evaluation is prepare.py's")
    train_paths, _ = split_files(data_source())
    pin = device == "cuda"
    batches = token_batches(tokenizer, doc_batches(train_paths, cycle=True))
    for rows, epoch in pack_rows(batches, B, T):
        if pin:
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=pin)
        yield rows[:, :-1], rows[:, 1:], epoch

# ---------------------------------------------------------------------------
# Data source and one-time setup
# ---------------------------------------------------------------------------

EVAL_ROWS_FILE = "eval_rows.npy"       # the scored rows, int32 (n_rows, T + 1)
PROBE_DOCS_FILE = "probe_docs.npy"     # documents left in the packing buffer: probe material


def data_source(profile: Profile = PROFILE) -> str:
    """The explicit AUTORESEARCH_DATA, else what `python prepare.py` chose for this scale."""
    name = os.environ.get("AUTORESEARCH_DATA", "").strip().lower()
    if name and name != "auto":
        if name not in SOURCES:
            sys.exit(f"AUTORESEARCH_DATA={name!r}: choose one of {', '.join(SOURCES)}")
        return name
    try:
        return json.loads(manifest_path(profile).read_text())["source"]
    except (OSError, ValueError, KeyError):
        sys.exit(f"no prepared data for scale {profile.scale.name!r} in {cache_root()}: "
                 f"run `python prepare.py` first")


def eval_dir(source: str, profile: Profile = PROFILE) -> Path:
    return cache_root() / "eval" / f"{source}-{profile.scale.name}"


def build_eval_rows(tokenizer: Tokenizer, profile: Profile = PROFILE, val_path: Path | None = None):
    """The original's evaluation rows: the validation file (or `val_path`: the holdout's)
    packed from its start (cycling, as its endless loader does) with the 1000-document buffer,
    EVAL_TOKENS // MAX_SEQ_LEN rows (its `steps * batch_size` for any batch size dividing
    that). Returns (rows int32 array, the documents left in the buffer)."""
    import numpy as np
    if val_path is None:
        _, val_path = split_files(data_source(profile))
    n_rows = max(1, profile.eval_tokens // profile.seq_len)
    buffer: list[list[int]] = []
    batches = token_batches(tokenizer, doc_batches([val_path], cycle=True))
    packer = pack_rows(batches, 1, profile.seq_len, buffer=buffer)
    rows = np.empty((n_rows, profile.seq_len + 1), dtype=np.int32)
    for i in range(n_rows):
        rows[i] = next(packer)[0][0].numpy()
    return rows, buffer


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr) -> bytes:
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def setup(profile: Profile = PROFILE) -> str:
    """Download or build the data, train the tokenizer, pack and pin the evaluation rows."""
    import numpy as np
    requested = os.environ.get("AUTORESEARCH_DATA", "").strip().lower() or "auto"
    if requested not in SOURCES + ("auto",):
        sys.exit(f"AUTORESEARCH_DATA={requested!r}: choose one of {', '.join(SOURCES)}")
    source = requested
    if requested == "auto":
        source = "climbmix" if online() else "offline"
        if source == "offline":
            print("Data: huggingface.co is unreachable, using the offline corpus", flush=True)
    if source == "climbmix":
        shards = int(os.environ.get("AUTORESEARCH_NUM_SHARDS") or profile.scale.train_shards)
        if not download_climbmix(shards):
            if requested != "auto":
                sys.exit("Data: ClimbMix download failed (set AUTORESEARCH_DATA=offline to go on)")
            print("Data: ClimbMix download failed, falling back to the offline corpus", flush=True)
            source = "offline"
    elif source == "tinystories" and not download_tinystories():
        sys.exit("Data: TinyStories download failed (set AUTORESEARCH_DATA=offline to go on)")
    if source == "offline":
        prepare_offline(profile)
    print(f"Data source: {source}", flush=True)
    train_tokenizer(source, profile)
    # record the choice first: everything below resolves the source through the manifest
    path = manifest_path(profile)
    _atomic_write(path, json.dumps({"source": source}).encode())
    tdir = tokenizer_dir(source, profile.vocab_size)
    tok = Tokenizer.from_directory(tdir)
    t0 = time.time()
    rows, left = build_eval_rows(tok, profile)
    # probe material: [count, lengths..., tokens...] of the documents left in the buffer
    probe = np.concatenate([[len(left)], [len(d) for d in left], *left]).astype(np.int64)
    edir = eval_dir(source, profile)
    rows_data, probe_data = _npy_bytes(rows), _npy_bytes(probe)
    _atomic_write(edir / EVAL_ROWS_FILE, rows_data)
    _atomic_write(edir / PROBE_DOCS_FILE, probe_data)
    manifest = {"source": source, "scale": asdict(profile.scale), "eval_rows": int(rows.shape[0]),
                "sha256": {"tokenizer": _sha256((tdir / TOKENIZER_FILE).read_bytes()),
                           "token_bytes": _sha256((tdir / TOKEN_BYTES_FILE).read_bytes()),
                           "eval_rows": _sha256(rows_data), "probe_docs": _sha256(probe_data)}}
    _atomic_write(path, json.dumps(manifest, indent=1).encode())
    print(f"Eval set: {rows.shape[0]} rows x {profile.seq_len} tokens packed in "
          f"{time.time() - t0:.1f}s, sha256 {manifest['sha256']['eval_rows'][:16]}", flush=True)
    return source

# ---------------------------------------------------------------------------
# The holdout split (the Goodhart guard): prepared into $AUTORESEARCH_HOLDOUT, read only there
# ---------------------------------------------------------------------------


def holdout_root() -> Path:
    where = os.environ.get("AUTORESEARCH_HOLDOUT", "").strip()
    if not where:
        raise EvalFailure("AUTORESEARCH_HOLDOUT is not set: the holdout split lives only where "
                          "the harness's holdout step can read it (holdout_setup in "
                          "autoresearch.toml prepares it)")
    return Path(where) / "nanochat"


def holdout_manifest_path(profile: Profile = PROFILE) -> Path:
    return holdout_root() / f"holdout-{profile.scale.name}.json"


def _pin_documents(path: Path, pins: Path) -> str:
    """SHA-256 of the holdout documents, recorded on first use in `pins` and checked on every
    later one: the holdout never changes under a run."""
    digest = _sha256(path.read_bytes())
    known = json.loads(pins.read_text()) if pins.exists() else {}
    if known.get(path.name, digest) != digest:
        raise EvalFailure(f"{path} differs from the holdout documents pinned in {pins} "
                          f"(sha256 mismatch): restore them, or start a new holdout folder")
    if path.name not in known:
        _atomic_write(pins, json.dumps({**known, path.name: digest}, indent=1).encode())
    return digest


def fetch_holdout_shard(root: Path, base_url: str | None = None, backoff: float = 2.0) -> Path:
    """ClimbMix's holdout shard, downloaded into root and pinned by SHA-256."""
    base_url = (base_url or os.environ.get("AUTORESEARCH_DATA_URL") or CLIMBMIX_URL).rstrip("/")
    path = root / shard_name(CLIMBMIX_HOLDOUT_SHARD)
    if not download_file(f"{base_url}/{path.name}", path, backoff=backoff):
        raise EvalFailure(f"the ClimbMix holdout shard {path.name} failed to download")
    _pin_documents(path, root / "pins.json")
    return path


def setup_holdout(profile: Profile = PROFILE) -> None:
    """The holdout split of the prepared source: its documents, packed into evaluation rows by
    the validation rule, with its own manifest of SHA-256 pins."""
    import numpy as np
    try:
        manifest = json.loads(manifest_path(profile).read_text())
    except (OSError, ValueError):
        raise EvalFailure(f"no prepared data for scale {profile.scale.name}: run `python "
                          f"prepare.py` first") from None
    source, root = manifest["source"], holdout_root()
    if source == "climbmix":
        docs = fetch_holdout_shard(root)
    elif source == "offline":
        docs = root / "offline_holdout.parquet"
        if not docs.exists():
            texts = offline_holdout_documents(profile.scale.offline_chars)
            tmp = docs.with_name(docs.name + ".tmp")
            root.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"text": texts}), tmp, row_group_size=1024)
            os.replace(tmp, docs)
        _pin_documents(docs, root / "pins.json")
    else:
        raise EvalFailure(f"the {source} source has no holdout split (its documents are all "
                          f"in the training and validation files): use climbmix or offline")
    tdir = tokenizer_dir(source, profile.vocab_size)
    tok = Tokenizer.from_directory(tdir)
    rows, left = build_eval_rows(tok, profile, docs)
    probe = np.concatenate([[len(left)], [len(d) for d in left], *left]).astype(np.int64)
    edir = root / f"eval-{source}-{profile.scale.name}"
    rows_data, probe_data = _npy_bytes(rows), _npy_bytes(probe)
    _atomic_write(edir / EVAL_ROWS_FILE, rows_data)
    _atomic_write(edir / PROBE_DOCS_FILE, probe_data)
    hold = {"source": source, "documents": docs.name, "eval_rows": int(rows.shape[0]),
            "sha256": {"documents": _sha256(docs.read_bytes()),
                       "tokenizer": manifest["sha256"]["tokenizer"],
                       "eval_rows": _sha256(rows_data), "probe_docs": _sha256(probe_data)}}
    _atomic_write(holdout_manifest_path(profile), json.dumps(hold, indent=1).encode())
    print(f"Holdout: {rows.shape[0]} rows x {profile.seq_len} tokens from {docs.name}, sha256 "
          f"{hold['sha256']['eval_rows'][:16]}", flush=True)

# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------
#
# train.py's code never runs in this process. Two isolated host processes
# (autoresearch.isolate: bubblewrap, no network, no shared files) each load the model and
# receive only input rows; they return logits, from which this process computes the loss with
# targets that never leave it. Causality probes are real-looking rows: a scored row's first
# documents (or first tokens) followed by other validation documents, packed by the same rule.
# A row and its probe always go to different hosts, in random order among the scored rows, so
# neither host can tell a probe from a scored row or remember the row it copies. Logits up to
# the first changed input must agree. Each distinct row is scored once, weighted by its count,
# and a probe diverges past every prefix another input shares (choose_probes), so no host has
# seen the other side's next token after the same prefix.

MODEL_WEIGHTS = "model.pt"
MODEL_INFO = "model.json"
TRAIN_LOG = "evaluate_train_output.log"
PROBE_EVERY = 16            # one probe per this many scored rows (at least 4 probes)
PROBE_VOCAB = 16            # secret random vocabulary entries compared per position


class EvalFailure(Exception):
    """The model cannot be scored; the message is the reason."""


def isolated_model(workdir: Path, device: str, options: dict):
    """Runs in the isolated host: train.py's GPT from model.json and model.pt, as a function
    from input ids (B, T) to float32 logits (B, T, vocab)."""
    info = json.loads((workdir / MODEL_INFO).read_text())
    import train
    with torch.device(device):
        model = train.GPT(train.GPTConfig(**info["config"]))
    state = torch.load(workdir / MODEL_WEIGHTS, map_location=device, weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    fwd = torch.compile(model, dynamic=False) if PROFILE.compile else model

    def logits(x):
        with torch.autocast(device_type=x.device.type, dtype=PROFILE.torch_dtype,
                            enabled=PROFILE.autocast):
            return fwd(x).float()
    return logits


def _verify_inputs(manifest: dict, profile: Profile, holdout: dict | None = None):
    """The pinned tokenizer, token-byte table and evaluation rows (the holdout's, given its
    manifest), checked against the hashes recorded at setup; the byte table is also
    recomputed from the tokenizer."""
    import numpy as np
    source = manifest["source"]
    pins = dict(manifest.get("sha256") or {})
    tdir, edir = tokenizer_dir(source, profile.vocab_size), eval_dir(source, profile)
    if holdout is not None:
        if holdout.get("source") != source or holdout["sha256"].get("tokenizer") != pins.get("tokenizer"):
            raise EvalFailure(f"the holdout split was prepared for other data or another "
                              f"tokenizer than {source}'s: run `python prepare.py "
                              f"--holdout-setup` again")
        edir = holdout_root() / f"eval-{source}-{profile.scale.name}"
        pins.update(eval_rows=holdout["sha256"]["eval_rows"],
                    probe_docs=holdout["sha256"]["probe_docs"])
        manifest = {**manifest, "eval_rows": holdout["eval_rows"]}
    files = {"tokenizer": tdir / TOKENIZER_FILE, "token_bytes": tdir / TOKEN_BYTES_FILE,
             "eval_rows": edir / EVAL_ROWS_FILE, "probe_docs": edir / PROBE_DOCS_FILE}
    data = {}
    for key, path in files.items():
        try:
            data[key] = path.read_bytes()
        except OSError:
            raise EvalFailure(f"{path} is missing: run `python prepare.py`") from None
        if _sha256(data[key]) != pins.get(key):
            raise EvalFailure(f"{path} differs from the one pinned at prepare time "
                              f"(sha256 mismatch): rerun `python prepare.py` in a clean cache")
    tok = Tokenizer.from_bytes(data["tokenizer"])
    table = token_bytes_table(tok)
    cached = torch.load(io.BytesIO(data["token_bytes"]), weights_only=True)
    if not torch.equal(cached, table):
        raise EvalFailure(f"{files['token_bytes']} does not match its tokenizer")
    rows = np.load(io.BytesIO(data["eval_rows"]), allow_pickle=False)
    flat = np.load(io.BytesIO(data["probe_docs"]), allow_pickle=False)
    n = int(flat[0])
    lengths, tokens = flat[1:1 + n], flat[1 + n:]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    pool = [tokens[starts[i]:starts[i + 1]].tolist() for i in range(n)]
    if rows.shape != (manifest["eval_rows"], profile.seq_len + 1):
        raise EvalFailure(f"evaluation rows have shape {rows.shape}, expected "
                          f"({manifest['eval_rows']}, {profile.seq_len + 1})")
    return tok, table, rows, pool


def make_probe(row, pool: list[list[int]], rng, bos: int, lo: int = 0):
    """A row that starts like `row` and continues with other documents, packed by the same rule:
    cut at a document start when the row has one past the first eighth (and at or past `lo`),
    else at a random token there. Returns (probe row, d): inputs agree before position d and
    differ at d (d = len(row) - 1 when they never differ)."""
    import numpy as np
    T1 = len(row)
    lo = max(T1 // 8, lo)
    starts = [i for i in np.flatnonzero(row == bos).tolist() if lo <= i < T1 - 2]
    cut = int(rng.choice(starts)) if starts else int(rng.integers(lo, T1 - 2))
    order = rng.permutation(len(pool))
    docs = [pool[i] for i in order[:64]]
    fill = next(pack_rows(iter([(docs, 1)]), 1, T1 - cut - 1, buffer_size=len(docs)))[0][0]
    probe = np.concatenate([row[:cut], fill.numpy().astype(row.dtype)])
    diff = np.flatnonzero(probe[:-1] != row[:-1])
    return probe, int(diff[0]) if len(diff) else T1 - 1


def longest_shared_prefix(x):
    """For each row of `x` (n, T): the length of the longest prefix it shares with any other
    row (T for a row with a copy). Sorted lexicographically, a row's longest match is a
    neighbour."""
    import numpy as np
    n, T = x.shape
    out = np.zeros(n, dtype=np.int64)
    if n < 2:
        return out
    # big-endian bytes of non-negative ids compare like the id sequences
    keys = np.ascontiguousarray(x.astype(">u4"))
    order = np.array(sorted(range(n), key=lambda i: keys[i].tobytes()))
    same = x[order[1:]] == x[order[:-1]]
    adjacent = np.where(same.all(1), T, np.argmin(same, 1))
    out[order[1:]] = adjacent
    out[order[:-1]] = np.maximum(out[order[:-1]], adjacent)
    return out


def choose_probes(rows, pool: list[list[int]], rng, bos: int, n_probe: int, attempts: int = 8):
    """Causality probes for the distinct `rows`: (sources, probes, cuts). A probe diverges from
    its source past every prefix the source shares with another row, and no other input (row
    or probe) agrees with the source or the probe beyond the divergence point: the host that
    answers one of the pair has never been shown the next token of the other after the same
    prefix, so it cannot replay the other's answers. Rows that cannot be probed so (a prefix
    shared up to the last tokens) are never sources."""
    import numpy as np
    T1 = rows.shape[1]
    shared = longest_shared_prefix(rows[:, :-1])
    candidates = [int(i) for i in rng.permutation(len(rows)) if shared[i] + 1 < T1 - 2]
    if not candidates:
        raise EvalFailure("no evaluation row can be probed for causality: every row shares "
                          "its prefix with another up to its last tokens")
    todo, spare = candidates[:n_probe], candidates[n_probe:]
    made: dict[int, tuple] = {}
    tries = dict.fromkeys(candidates, 0)
    while todo:
        for s in todo:
            made[s] = make_probe(rows[s], pool, rng, bos, lo=int(shared[s]) + 1)
            tries[s] += 1
        keys = list(made)
        # rows cannot reach past a divergence point (it lies past the source's shared prefix);
        # the other probes, and the other sources, are checked here
        reach = longest_shared_prefix(np.stack([rows[s][:-1] for s in keys]
                                               + [made[s][0][:-1] for s in keys]))
        todo = []
        for j, s in enumerate(keys):
            d = made[s][1]
            if d < T1 - 1 and max(reach[j], reach[len(keys) + j]) <= d:
                continue
            if tries[s] < attempts:
                todo.append(s)
            else:                       # another source instead, while there are any
                del made[s]
                todo.extend(spare[:1])
                spare = spare[1:]
    if not made:
        raise EvalFailure("no causality probe could be drawn that diverges past every shared "
                          "prefix: the evaluation rows are too repetitive")
    keys = list(made)
    return keys, [made[s][0] for s in keys], [made[s][1] for s in keys]


def evaluate_isolated(workdir: Path, rows, tables: tuple[torch.Tensor, torch.Tensor],
                      vocab: int, bos: int, pool, profile: Profile, atol: float,
                      sandbox: bool = True, rng=None) -> dict:
    """Score `rows` through two isolated model hosts; returns the figures. `tables` are the
    bytes per token by the original's rule (the metric) and the true bytes. `rng` (a numpy
    Generator) draws the probes and the hosts' shares; by default a fresh secret seed."""
    import numpy as np
    try:
        from autoresearch.isolate import IsolationError, ModelProcess
    except ImportError:
        raise EvalFailure(f"autoresearch.isolate is not importable by {sys.executable}: "
                          f"install autoresearch into it (or set PYTHONPATH to its src)") from None
    if rng is None:
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    n_probe = max(4, rows.shape[0] // PROBE_EVERY)
    # each distinct row once, weighted by its count: a host never sees a copy of a row it
    # could replay answers from (the offline CPU rows are 17 distinct rows 128 times)
    rows, count = np.unique(rows, axis=0, return_counts=True)
    n, T = rows.shape[0], rows.shape[1] - 1
    half = rng.permutation(n) % 2                            # host of each scored row
    sources, probes, cuts = choose_probes(rows, pool, rng, bos, min(n, n_probe))
    n_probe = len(sources)
    # work items: (row index or -1 - probe index); a probe goes to the other host than its source
    queues = [[], []]
    for i in range(n):
        queues[half[i]].append(i)
    for k, s in enumerate(sources):
        queues[1 - half[s]].append(-1 - k)
    for q in queues:
        rng.shuffle(q)
    dev = torch.device(profile.device)
    table_d, raw_d = tables[0].to(dev), tables[1].to(dev)
    secret = torch.from_numpy(rng.choice(vocab, size=PROBE_VOCAB, replace=False)).to(dev)
    watched = {int(s): k for k, s in enumerate(sources)}
    prints: dict = {}
    total_nats, total_bytes, total_raw = 0.0, 0, 0
    B = profile.eval_batch
    # eager, with SDPA for the windows too: cheaper than compiling a fresh process's forward
    env = {"AUTORESEARCH_NANOCHAT_PROFILE": profile.name, "AUTORESEARCH_NANOCHAT_COMPILE": "0",
           "AUTORESEARCH_NANOCHAT_ATTENTION": "sdpa"}
    if profile.threads:
        env["OMP_NUM_THREADS"] = str(max(1, profile.threads // 2))
    hosts = [ModelProcess("prepare:isolated_model", workdir, device=profile.device,
                          out_capacity=B * T * vocab, log_path=workdir / TRAIN_LOG,
                          sandbox=sandbox, env=env, hidden=[str(cache_root()), *_holdout_hidden()])
             for _ in range(2)]
    chunks = [[q[k:k + B] for k in range(0, len(q), B)] for q in queues]
    try:
        for h in hosts:
            h.start()
        pending = [0, 0]

        def submit(h: int) -> None:
            items = chunks[h][pending[h]]
            items = items + [items[0]] * (B - len(items))     # every call has the same shape
            x = np.stack([rows[i] if i >= 0 else probes[-1 - i] for i in items])[:, :-1]
            hosts[h].submit(x.astype(np.int32))

        for h in (0, 1):
            if chunks[h]:
                submit(h)
        active = [bool(chunks[h]) for h in (0, 1)]
        while any(active):
            for h in (0, 1):
                if not active[h]:
                    continue
                out = hosts[h].collect()
                items = chunks[h][pending[h]]
                logits = (out if isinstance(out, torch.Tensor) else torch.from_numpy(out))
                logits = logits[:len(items)].to(dev)
                if logits.shape != (len(items), T, vocab):
                    raise EvalFailure(f"model(idx) must return logits of shape (B, T, "
                                      f"{vocab}); got {tuple(out.shape)}")
                lse = torch.logsumexp(logits, dim=-1)
                batch = np.stack([rows[i] if i >= 0 else probes[-1 - i] for i in items])
                y = torch.from_numpy(batch[:, 1:].astype(np.int64)).to(dev)
                w = torch.tensor([int(count[i]) if i >= 0 else 0 for i in items],
                                 device=dev)[:, None]              # copies of the row
                nll = lse - logits.gather(-1, y[..., None]).squeeze(-1)
                nb = table_d[y] * w
                sums = torch.stack([(nll.double() * (table_d[y] > 0) * w).sum(),
                                    nb.sum().double(), (raw_d[y] * w).sum().double()]).tolist()
                total_nats += sums[0]
                total_bytes += int(sums[1])
                total_raw += int(sums[2])
                for j, i in enumerate(items):
                    k = watched.get(i) if i >= 0 else -1 - i
                    if k is not None:
                        d = cuts[k]
                        # the same columns for both: both rows' next tokens, then the secret ones
                        pair = np.stack([rows[sources[k]][1:d + 1], probes[k][1:d + 1]], 1)
                        idx = torch.cat([torch.from_numpy(pair.astype(np.int64)).to(dev),
                                         secret.expand(d, -1)], 1)
                        fp = logits[j, :d].gather(-1, idx) - lse[j, :d, None]
                        prints.setdefault(k, {})["probe" if i < 0 else "source"] = fp.cpu()
                if dev.type == "cuda":  # done reading the shared buffer before it is reused
                    torch.cuda.synchronize()
                pending[h] += 1
                if pending[h] < len(chunks[h]):
                    submit(h)
                else:
                    active[h] = False
    except IsolationError as e:
        raise EvalFailure(f"evaluating train.py's model failed: {e}") from None
    finally:
        for h in hosts:
            h.close()
    worst = 0.0
    for k, pair in prints.items():
        diff = float((pair["probe"] - pair["source"]).abs().max())
        worst = max(worst, diff if math.isfinite(diff) else math.inf)
        if not diff <= atol:
            raise EvalFailure(f"model is not causal: tokens after position {cuts[k] - 1} "
                              f"changed the log-probabilities before them by {diff:.3g} "
                              f"(tolerance {atol:g})")
    return {"val_bpb": total_nats / (math.log(2) * total_bytes),
            "val_bpb_true_bytes": total_nats / (math.log(2) * total_raw),
            "causal_probes": n_probe, "causal_max_diff": worst,
            "sandboxed": int(all(h.sandboxed for h in hosts))}


def _holdout_hidden() -> list[str]:
    where = os.environ.get("AUTORESEARCH_HOLDOUT", "").strip()
    return [where] if where else []


def uniform_bpb(rows, token_bytes: torch.Tensor, vocab: int) -> float:
    """The score of a model that knows nothing (uniform over the vocabulary)."""
    y = torch.from_numpy(rows[:, 1:].astype("int64")).reshape(-1)
    nbytes = token_bytes.cpu()[y]
    return (nbytes > 0).sum().item() * math.log2(vocab) / nbytes.sum().item()


def peak_memory_mb() -> float:
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if DEVICE == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def evaluate(workdir: Path = Path("."), holdout: bool = False) -> int:
    """Score the saved model (on the holdout split with `holdout`); prints `name: value`
    lines. Returns the exit status."""
    t0 = time.time()
    profile = PROFILE
    workdir = workdir.resolve()
    if not manifest_path(profile).exists():
        print(f"eval_error: no prepared data for scale {profile.scale.name}; "
              f"run `python prepare.py`")
        return 1
    manifest = json.loads(manifest_path(profile).read_text())
    for name in (MODEL_WEIGHTS, MODEL_INFO):
        if not (workdir / name).exists():
            print(f"eval_error: {name} is missing: train.py must save the model")
            return 1
    try:
        hold = None
        if holdout:
            try:
                hold = json.loads(holdout_manifest_path(profile).read_text())
            except (OSError, ValueError):
                raise EvalFailure(f"no holdout split in {holdout_root()}: run `python "
                                  f"prepare.py --holdout-setup`") from None
        tok, table, rows, pool = _verify_inputs(manifest, profile, hold)
        vocab = tok.get_vocab_size()
        sandbox = os.environ.get("AUTORESEARCH_ISOLATE", "sandbox") != "plain"
        # bf16 or fp16 kernels may round differently between calls; a peeking model moves
        # log-probabilities by far more than this
        tables = (table, token_raw_bytes_table(tok))
        figures = evaluate_isolated(workdir, rows, tables, vocab, tok.get_bos_token_id(), pool,
                                    profile, atol=2e-2 if profile.autocast else 1e-3,
                                    sandbox=sandbox)
    except EvalFailure as e:
        print(f"eval_error: {e}")
        return 1
    val_bpb = figures["val_bpb"]
    if not math.isfinite(val_bpb):
        print(f"eval_error: val_bpb is not finite ({val_bpb})")
        return 1
    try:
        info = json.loads((workdir / MODEL_INFO).read_text())
    except ValueError:
        info = {}
    training = info.get("training", {}) if isinstance(info, dict) else {}
    print("---")
    for key, value in (training.items() if isinstance(training, dict) else ()):
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and re.fullmatch(r"[a-z_]+", str(key)) and key != "val_bpb"
                and key not in figures):
            print(f"{key}: {value}")
    print(f"eval_peak_mem_mb: {peak_memory_mb():.1f}")
    print(f"eval_seconds: {time.time() - t0:.1f}")
    print(f"eval_tokens: {rows.shape[0] * profile.seq_len}")
    print(f"uniform_bpb: {uniform_bpb(rows, table, vocab):.6f}")
    print(f"val_bpb_true_bytes: {figures['val_bpb_true_bytes']:.6f}")
    print(f"causal_probes: {figures['causal_probes']}")
    print(f"causal_max_diff: {figures['causal_max_diff']:.3g}")
    print(f"eval_sandboxed: {figures['sandboxed']}")
    print(f"# profile {profile.name} ({profile.reason}), data {manifest['source']}"
          + (f", holdout {hold['documents']}" if hold else ""))
    print(f"val_bpb: {val_bpb:.6f}")
    return 0

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="nanochat target: data setup and evaluation")
    parser.add_argument("--evaluate", action="store_true", help="score the saved model")
    parser.add_argument("--holdout", action="store_true",
                        help="with --evaluate: score it on the holdout split")
    parser.add_argument("--holdout-setup", action="store_true",
                        help="prepare the holdout split into $AUTORESEARCH_HOLDOUT")
    args = parser.parse_args()
    if args.evaluate:
        sys.exit(evaluate(holdout=args.holdout))
    if args.holdout_setup:
        try:
            setup_holdout()
        except EvalFailure as e:
            sys.exit(f"holdout setup failed: {e}")
        sys.exit(0)
    print(f"Cache: {cache_root()}  profile: {PROFILE.name} ({PROFILE.reason})", flush=True)
    setup()
    print("Done: ready to train.", flush=True)
