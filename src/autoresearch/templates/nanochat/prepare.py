"""Locked half of the nanochat target: data, tokenizer, dataloader and the fixed evaluation.

    python prepare.py               # one-time setup: data + BPE tokenizer into the cache
    python prepare.py --evaluate    # score train.py's saved model (a fresh process, the metric)

The agent edits train.py only. Everything that defines the metric lives here: the platform
profile (sequence length, evaluation tokens, vocabulary), the pinned validation set and the
bits-per-byte computation, which takes logits from the model and computes the loss itself.

Environment (all optional):
    AUTORESEARCH_CACHE       cache root (default ~/.cache/autoresearch); data under nanochat/
    AUTORESEARCH_PROFILE     cuda | mps | cpu (default: detected)
    AUTORESEARCH_DATA        climbmix | tinystories | offline (default: climbmix when
                             huggingface.co answers within 3 s, else offline)
    AUTORESEARCH_DATA_URL    base URL of a mirror of the dataset files
    AUTORESEARCH_NUM_SHARDS  ClimbMix training shards to download (default: per profile)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
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
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

# ---------------------------------------------------------------------------
# Constants and platform profiles (fixed: they define the metric)
# ---------------------------------------------------------------------------

TIME_BUDGET = 300            # seconds of training (AUTORESEARCH_BUDGET_SECONDS overrides)


@dataclass(frozen=True)
class Profile:
    name: str
    seq_len: int             # tokens per row, training and evaluation
    eval_tokens: int         # validation tokens scored per evaluation
    eval_batch: int          # rows per evaluation forward pass
    vocab_size: int          # BPE vocabulary, special tokens included
    tokenizer_chars: int     # characters of training text the BPE is trained on
    train_shards: int        # ClimbMix training shards downloaded by default
    offline_chars: int       # size cap of the offline corpus, characters
    compile: bool            # torch.compile the model (CUDA only)
    autocast: bool           # bf16 autocast
    peak_flops: float        # bf16 peak of the reference device, for MFU (0: not reported)


PROFILES = {
    # the original's scale on one H100
    "cuda": Profile("cuda", 2048, 40 * 524288, 32, 8192, 1_000_000_000, 10, 1 << 62,
                    True, True, 989.5e12),
    # Apple silicon, sized as the small-hardware forks did
    "mps": Profile("mps", 256, 2**17, 64, 4096, 50_000_000, 2, 60_000_000, False, False, 0.0),
    # CPU and CI: a tiny model that still learns within 20 s on two cores
    "cpu": Profile("cpu", 256, 2**15, 32, 2048, 2_000_000, 1, 6_000_000, False, False, 0.0),
}


def detect_profile() -> Profile:
    name = os.environ.get("AUTORESEARCH_PROFILE", "").strip().lower()
    if not name:
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name not in PROFILES:
        sys.exit(f"AUTORESEARCH_PROFILE={name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


PROFILE = detect_profile()
DEVICE = PROFILE.name
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
    return cache_root() / f"prepared-{profile.name}.json"


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
    hash of their path) are validation, training documents shuffled with a fixed seed.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in skip]  # never descend into installed packages
        files.extend(Path(root) / n for n in names if n.endswith(".py"))
    files.sort()
    train, val, total = [], [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        rel = path.relative_to(stdlib).as_posix()
        docs = _chunk(text, OFFLINE_DOC_CHARS)
        (val if zlib.crc32(rel.encode()) % 20 == 0 else train).extend(docs)
        total += len(text)
        if total >= max_chars:
            break
    random.Random(1337).shuffle(train)
    return train, val


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


def prepare_offline(profile: Profile) -> None:
    out = data_dir("offline")
    if (out / "val.parquet").exists():
        print(f"Data: offline corpus cached in {out}", flush=True)
        return
    train, val = offline_documents(profile.offline_chars)
    _write_split(out, train, val)
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
# Tokenizer: BPE trained with rustbpe, used through tiktoken
# ---------------------------------------------------------------------------


class Tokenizer:
    """tiktoken encoding plus the BOS id; documents are encoded with BOS in front."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, directory: Path | None = None) -> Tokenizer:
        import tiktoken
        directory = Path(directory or tokenizer_dir(data_source()))
        with open(directory / "tokenizer.pkl", "rb") as f:
            spec = pickle.load(f)
        enc = tiktoken.Encoding(name="nanochat-bpe", pat_str=spec["pattern"],
                                mergeable_ranks=spec["ranks"], special_tokens=spec["special"])
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


def train_tokenizer(source: str, profile: Profile = PROFILE) -> None:
    out = tokenizer_dir(source, profile.vocab_size)
    if (out / "tokenizer.pkl").exists() and (out / "token_bytes.pt").exists():
        print(f"Tokenizer: cached in {out}", flush=True)
        return
    import rustbpe
    train_paths, _ = split_files(source)
    budget = profile.tokenizer_chars

    def texts():
        n = 0
        for text, _ in iter_texts(train_paths, cycle=False, doc_cap=10_000):
            yield text
            n += len(text)
            if n >= budget:
                return

    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), profile.vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
    special = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    spec = {"pattern": bpe.get_pattern(), "ranks": ranks, "special": special}
    _atomic_write(out / "tokenizer.pkl", pickle.dumps(spec))
    tok = Tokenizer.from_directory(out)
    # bytes of text each token stands for; 0 for special tokens, which bpb does not count
    nbytes = [0 if i in special.values() else len(tok.enc.decode_single_token_bytes(i))
              for i in range(tok.get_vocab_size())]
    tmp = out / f"token_bytes.pt.tmp{os.getpid()}"
    torch.save(torch.tensor(nbytes, dtype=torch.int32), tmp)
    os.replace(tmp, out / "token_bytes.pt")
    sample = "Hello world! Numbers: 123. Unicode: \u4f60\u597d"
    assert tok.decode(tok.encode(sample)) == sample, "tokenizer round trip failed"
    print(f"Tokenizer: vocab {tok.get_vocab_size()} trained in {time.time() - t0:.1f}s, "
          f"saved to {out}", flush=True)


def get_token_bytes(device: str = "cpu") -> torch.Tensor:
    return torch.load(tokenizer_dir(data_source()) / "token_bytes.pt", map_location=device)

# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned rows, best-fit packing, no padding
# ---------------------------------------------------------------------------


def pack_rows(docs, B: int, T: int, buffer_size: int = 1000):
    """Yield (rows[B, T+1] int64, epoch) from an iterator of (token list, epoch).

    Every row starts at a document's BOS. Each slot is filled with the longest buffered
    document that fits; when none fits the shortest is cropped to fill the row exactly,
    so no token is padding. Ends when the documents run out (a partial batch is dropped).
    """
    capacity = T + 1
    buf: list[list[int]] = []
    epoch = 1
    exhausted = False
    while True:
        rows = torch.empty((B, capacity), dtype=torch.long)
        for r in range(B):
            pos = 0
            while pos < capacity:
                while not exhausted and len(buf) < buffer_size:
                    try:
                        doc, epoch = next(docs)
                        buf.append(doc)
                    except StopIteration:
                        exhausted = True
                if not buf:
                    return
                room = capacity - pos
                best = -1
                for i, d in enumerate(buf):
                    if len(d) <= room and (best < 0 or len(d) > len(buf[best])):
                        best = i
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


def _token_docs(tokenizer: Tokenizer, paths: list[Path], cycle: bool, batch: int = 128):
    bos = tokenizer.get_bos_token_id()
    texts = iter_texts(paths, cycle=cycle)
    while True:
        chunk = [t for t in (next(texts, None) for _ in range(batch)) if t is not None]
        if not chunk:
            return
        for ids in tokenizer.encode([t for t, _ in chunk], prepend=bos):
            yield ids, chunk[0][1]


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, device: str = DEVICE):
    """Endless (inputs, targets, epoch) batches of the training or validation split."""
    assert split in ("train", "val")
    train_paths, val_path = split_files(data_source())
    paths = train_paths if split == "train" else [val_path]
    buffer_size = 1000 if PROFILE.name == "cuda" else 128
    pin = device == "cuda"
    for rows, epoch in pack_rows(_token_docs(tokenizer, paths, cycle=True), B, T, buffer_size):
        if pin:
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=pin)
        yield rows[:, :-1], rows[:, 1:], epoch

# ---------------------------------------------------------------------------
# Data source and one-time setup
# ---------------------------------------------------------------------------


def data_source(profile: Profile = PROFILE) -> str:
    """The explicit AUTORESEARCH_DATA, else what `python prepare.py` chose for this profile."""
    name = os.environ.get("AUTORESEARCH_DATA", "").strip().lower()
    if name and name != "auto":
        if name not in SOURCES:
            sys.exit(f"AUTORESEARCH_DATA={name!r}: choose one of {', '.join(SOURCES)}")
        return name
    try:
        return json.loads(manifest_path(profile).read_text())["source"]
    except (OSError, ValueError, KeyError):
        sys.exit(f"no prepared data for profile {profile.name!r} in {cache_root()}: "
                 f"run `python prepare.py` first")


def eval_rows(tokenizer: Tokenizer, profile: Profile = PROFILE) -> torch.Tensor:
    """The pinned evaluation set: the first EVAL_TOKENS of the packed validation split."""
    _, val_path = split_files(data_source(profile))
    n_rows = max(1, profile.eval_tokens // profile.seq_len)
    docs = _token_docs(tokenizer, [val_path], cycle=False)
    packed = [r for r, _ in pack_rows(docs, 1, profile.seq_len, buffer_size=128)][:n_rows]
    if len(packed) < n_rows:
        print(f"Eval: validation split holds only {len(packed)} of {n_rows} rows", flush=True)
    return torch.cat(packed)


def rows_digest(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int32).numpy().tobytes()).hexdigest()


def setup(profile: Profile = PROFILE) -> str:
    """Download or build the data, train the tokenizer, pin the validation set."""
    requested = os.environ.get("AUTORESEARCH_DATA", "").strip().lower() or "auto"
    if requested not in SOURCES + ("auto",):
        sys.exit(f"AUTORESEARCH_DATA={requested!r}: choose one of {', '.join(SOURCES)}")
    source = requested
    if requested == "auto":
        source = "climbmix" if online() else "offline"
        if source == "offline":
            print("Data: huggingface.co is unreachable, using the offline corpus", flush=True)
    if source == "climbmix":
        shards = int(os.environ.get("AUTORESEARCH_NUM_SHARDS") or profile.train_shards)
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
    tok = Tokenizer.from_directory(tokenizer_dir(source, profile.vocab_size))
    rows = eval_rows(tok, profile)
    manifest = {"source": source, "profile": asdict(profile), "eval_rows": rows.shape[0],
                "eval_sha256": rows_digest(rows)}
    _atomic_write(path, json.dumps(manifest, indent=1).encode())
    print(f"Eval set: {rows.shape[0]} rows x {profile.seq_len} tokens, "
          f"sha256 {manifest['eval_sha256'][:16]}", flush=True)
    return source

# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------

# Taken before train.py is imported, so nothing train.py does at import time reaches them.
_log_softmax = torch.log_softmax
_gather = torch.gather
_no_grad = torch.no_grad
_exit = os._exit
MODEL_WEIGHTS = "model.pt"
MODEL_INFO = "model.json"
TRAIN_LOG = "evaluate_train_output.log"


class EvalFailure(Exception):
    """The model cannot be scored; the message is the reason."""


class _Quiet:
    """Send fd 1 and 2 to a file while train.py's code runs, so it cannot print metric lines."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.f = open(self.path, "ab")
        os.dup2(self.f.fileno(), 1)
        os.dup2(self.f.fileno(), 2)

    def __exit__(self, *exc):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.f.close()


def load_model(workdir: Path, device: str):
    """Build train.py's GPT from model.json and load model.pt (strictly)."""
    info = json.loads((workdir / MODEL_INFO).read_text())
    sys.path.insert(0, str(workdir))
    import train
    model = train.GPT(train.GPTConfig(**info["config"]))
    state = torch.load(workdir / MODEL_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def _logits(model, x: torch.Tensor, profile: Profile) -> torch.Tensor:
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=profile.autocast):
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.shape[:2] != x.shape or out.dim() != 3:
        raise EvalFailure(f"model(idx) must return logits of shape (B, T, vocab); "
                          f"got {getattr(out, 'shape', type(out).__name__)}")
    return out.float()


def check_causal(model, rows: torch.Tensor, profile: Profile, vocab: int, atol: float) -> None:
    """Logits at positions <= t must not change when tokens after t change."""
    gen = torch.Generator().manual_seed(0)
    x = rows[: min(4, rows.shape[0]), :-1]
    T = x.shape[1]
    base = _logits(model, x.to(DEVICE), profile)
    for cut in (T // 4, T // 2, T - 2):
        y = x.clone()
        y[:, cut + 1:] = torch.randint(0, vocab, y[:, cut + 1:].shape, generator=gen)
        alt = _logits(model, y.to(DEVICE), profile)
        diff = (alt[:, :cut + 1] - base[:, :cut + 1]).abs().max().item()
        if not diff <= atol:
            raise EvalFailure(f"model is not causal: changing tokens after position {cut} "
                              f"changed earlier logits by {diff:.3g} (tolerance {atol:g})")


def evaluate_bpb(model, rows: torch.Tensor, token_bytes: torch.Tensor, profile: Profile) -> float:
    """Bits per byte over the pinned rows: nats summed over target tokens (special tokens,
    of byte length 0, excluded) divided by ln 2 times their bytes. Independent of vocab size."""
    total_nats, total_bytes = 0.0, 0
    for k in range(0, rows.shape[0], profile.eval_batch):
        batch = rows[k:k + profile.eval_batch].to(DEVICE)
        x, y = batch[:, :-1], batch[:, 1:]
        logp = _log_softmax(_logits(model, x, profile), dim=-1)
        nll = -_gather(logp, -1, y.unsqueeze(-1)).squeeze(-1)
        nbytes = token_bytes[y]
        total_nats += (nll * (nbytes > 0)).sum().item()
        total_bytes += nbytes.sum().item()
    return total_nats / (math.log(2) * total_bytes)


def uniform_bpb(rows: torch.Tensor, token_bytes: torch.Tensor, vocab: int) -> float:
    """The score of a model that knows nothing (uniform over the vocabulary)."""
    y = rows[:, 1:].reshape(-1)
    nbytes = token_bytes.cpu()[y]
    return (nbytes > 0).sum().item() * math.log2(vocab) / nbytes.sum().item()


def peak_memory_mb() -> float:
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if DEVICE == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def evaluate(workdir: Path = Path(".")) -> int:
    """Score the saved model; prints `name: value` lines. Returns the exit status."""
    t0 = time.time()
    profile = PROFILE
    manifest = json.loads(manifest_path(profile).read_text()) if manifest_path(profile).exists() else None
    if manifest is None:
        print(f"eval_error: no prepared data for profile {profile.name}; run `python prepare.py`")
        return 1
    tok = Tokenizer.from_directory(tokenizer_dir(manifest["source"], profile.vocab_size))
    rows = eval_rows(tok, profile)
    if rows.shape[0] != manifest["eval_rows"] or rows_digest(rows) != manifest["eval_sha256"]:
        print("eval_error: the validation set differs from the one pinned at prepare time")
        return 1
    token_bytes = get_token_bytes(DEVICE)
    vocab = tok.get_vocab_size()
    for name in (MODEL_WEIGHTS, MODEL_INFO):
        if not (workdir / name).exists():
            print(f"eval_error: {name} is missing: train.py must save the model")
            return 1
    log = str(workdir / TRAIN_LOG)
    try:
        with _Quiet(log), _no_grad():
            model, info = load_model(workdir, DEVICE)
            if profile.compile:
                model = torch.compile(model, dynamic=False)
            # bf16 kernels may differ in the last bits between batches; a peeking model
            # moves logits by far more than this
            check_causal(model, rows, profile, vocab, atol=2e-2 if profile.autocast else 1e-4)
            val_bpb = evaluate_bpb(model, rows, token_bytes, profile)
    except EvalFailure as e:
        print(f"eval_error: {e}")
        return 1
    except Exception as e:  # the agent's code failed; say so in one line
        print(f"eval_error: evaluating train.py's model failed: {type(e).__name__}: {e} "
              f"(output of train.py's code is in {TRAIN_LOG})")
        return 1
    if not math.isfinite(val_bpb):
        print(f"eval_error: val_bpb is not finite ({val_bpb})")
        return 1
    training = info.get("training", {}) if isinstance(info, dict) else {}
    print("---")
    for key, value in training.items():  # train.py's own figures, for the record
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and re.fullmatch(r"[a-z_]+", str(key)) and key != "val_bpb"):
            print(f"{key}: {value}")
    print(f"eval_peak_mem_mb: {peak_memory_mb():.1f}")
    print(f"eval_seconds: {time.time() - t0:.1f}")
    print(f"eval_tokens: {rows.shape[0] * profile.seq_len}")
    print(f"uniform_bpb: {uniform_bpb(rows, token_bytes, vocab):.6f}")
    print(f"# profile {profile.name}, data {manifest['source']}")
    print(f"val_bpb: {val_bpb:.6f}")
    return 0

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="nanochat target: data setup and evaluation")
    parser.add_argument("--evaluate", action="store_true", help="score the saved model")
    args = parser.parse_args()
    if args.evaluate:
        code = evaluate()
        sys.stdout.flush()
        sys.stderr.flush()
        # skip atexit handlers and threads train.py may have left behind: nothing prints after us
        _exit(code)
    print(f"Cache: {cache_root()}  profile: {PROFILE.name}", flush=True)
    setup()
    print("Done: ready to train.", flush=True)
