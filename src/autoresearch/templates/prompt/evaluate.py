"""prompt target: the evaluator (LOCKED). Accuracy of the system prompt on a labelled set.

    python evaluate.py            every review of data/test.jsonl; prints `accuracy`
    python evaluate.py --check    the first few reviews (the run step)

The endpoint is any OpenAI-compatible Chat Completions server: OPENAI_BASE_URL (default
http://127.0.0.1:8000/v1), OPENAI_API_KEY, and PROMPT_MODEL (default gpt-4o-mini). Offline, the
fake server with toy_model.py stands in (see toy_model.py).

The system prompt is built here from prompt.toml (role, task, format, hints, then `examples`
labelled reviews from data/train.jsonl). Gates, before any request: the prompt is at most
MAX_PROMPT_CHARS long and contains no review of the test set (no leaking the answers: a review's
words in order, whatever its case, punctuation and spacing). Each answer is normalised (case,
surrounding punctuation) and must be exactly one of the labels; anything else counts as wrong. `accuracy_se` is the binomial standard error of the accuracy.
"""

import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import tomllib
except ImportError:      # Python 3.10
    import tomli as tomllib

LABELS = ("positive", "negative")
MAX_PROMPT_CHARS = 4000
CONCURRENCY = 4
RETRIES = 3                      # per request, on 429 / 5xx / connection errors
REQUEST_TIMEOUT = 60.0           # seconds


def fail(message: str) -> int:
    print(f"eval_error: {message}", flush=True)
    return 1


def load(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def system_prompt(cfg: dict, train: list[dict]) -> str:
    parts = [str(cfg.get(k, "")).strip() for k in ("role", "task", "format", "hints")]
    k = int(cfg.get("examples", 0))
    if not 0 <= k <= len(train):
        raise ValueError(f"examples = {k}: must be between 0 and {len(train)}")
    if k:
        parts.append("Examples:\n" + "\n".join(f"Review: {e['text']} => {e['label']}"
                                               for e in train[:k]))
    return "\n\n".join(p for p in parts if p)


def words(text: str) -> str:
    """Text as its words only (case, punctuation and spacing dropped), padded with spaces: a
    review is leaked when its words appear in the prompt in order, however they are dressed."""
    return " " + " ".join(re.findall(r"[^\W_]+", text.lower())) + " "


def normalise(answer: str) -> str:
    return re.sub(r"^[\W_]+|[\W_]+$", "", answer.strip().lower())


def ask(base: str, key: str, model: str, system: str, text: str, temperature: float) -> str:
    body = json.dumps({"model": model, "temperature": temperature, "max_tokens": 5,
                       "messages": [{"role": "system", "content": system},
                                    {"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(f"{base.rstrip('/')}/chat/completions", data=body,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {key}"})
    for attempt in range(RETRIES + 1):
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as resp:
                return json.loads(resp.read())["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as e:
            if e.code not in (429, 500, 502, 503, 529) or attempt == RETRIES:
                raise RuntimeError(f"the endpoint answered HTTP {e.code}: "
                                   f"{e.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            if attempt == RETRIES:
                raise RuntimeError(f"cannot reach {base} ({e}): start the server or set "
                                   f"OPENAI_BASE_URL") from None
        time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    try:
        cfg = tomllib.loads(Path("prompt.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        return fail(f"prompt.toml: {e}")
    train, test = load("data/train.jsonl"), load("data/test.jsonl")
    try:
        system = system_prompt(cfg, train)
        temperature = float(cfg.get("temperature", 0.0))
    except (TypeError, ValueError) as e:
        return fail(f"prompt.toml: {e}")
    if len(system) > MAX_PROMPT_CHARS:
        return fail(f"the system prompt has {len(system)} characters, over {MAX_PROMPT_CHARS}")
    folded = words(system)
    leaked = next((t["text"] for t in test if words(t["text"]) in folded), None)
    if leaked is not None:
        return fail(f"the system prompt contains a review of the test set ({leaked!r})")
    items = test[:5] if "--check" in argv else test
    base = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    key = os.environ.get("OPENAI_API_KEY", "none")
    model = os.environ.get("PROMPT_MODEL", "gpt-4o-mini")
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            answers = list(pool.map(lambda t: ask(base, key, model, system, t["text"],
                                                  temperature), items))
    except RuntimeError as e:
        return fail(str(e))
    seconds = time.perf_counter() - t0
    right = sum(normalise(a) == t["label"] for a, t in zip(answers, items))
    unparsed = sum(normalise(a) not in LABELS for a in answers)
    acc = right / len(items)
    print(f"accuracy: {acc:.4f}")
    print(f"accuracy_se: {math.sqrt(acc * (1 - acc) / len(items)):.4f}")
    print(f"unparsed: {unparsed}")
    print(f"prompt_chars: {len(system)}")
    print(f"eval_seconds: {seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
