"""prompt target: a toy model for offline dry runs (LOCKED). Not a language model.

    python -m autoresearch.testing.fake_llm --openai --responder toy_model:respond --port 8000

A deterministic stand-in that reacts to a system prompt the way a weak model might, so the
whole loop can be tried without an API key: it knows a few sentiment words; it learns more from
labelled examples given in the system prompt (lines `Review: ... => label`); it handles "not"
only when the prompt mentions negation; and it answers with a bare label only when the prompt
asks for exactly one word. Real runs point OPENAI_BASE_URL at a real endpoint instead.
"""

import re

_KNOWN = {"good": 1, "great": 1, "excellent": 1, "bad": -1, "awful": -1, "terrible": -1}
_EXAMPLE = re.compile(r"^Review:\s*(.*?)\s*=>\s*(positive|negative)\s*$", re.M | re.I)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def respond(body: dict) -> str:
    messages = body.get("messages", [])
    system = "\n".join(m.get("content", "") for m in messages if m.get("role") == "system")
    user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    lexicon = dict(_KNOWN)
    for text, label in _EXAMPLE.findall(system):
        sign = 1 if label.lower() == "positive" else -1
        words = _words(text)
        flip = -1 if "not" in words else 1
        # the opinion word: the last long word (a weak model's guess, good enough here)
        opinion = [w for w in words if len(w) > 4 and w != "overall"][-1:]
        for w in opinion:
            lexicon.setdefault(w, sign * flip)
    negation = "negation" in system.lower()
    score, flip = 0, 1
    for w in _words(user):
        if w in ("not", "never") and negation:
            flip = -1
            continue
        if w in lexicon:
            score += lexicon[w] * flip
            flip = 1
    label = "positive" if score > 0 else "negative" if score < 0 else "mixed"
    if "exactly one word" in system.lower():
        return label.capitalize() + "."
    return f"I would say the sentiment of this review is {label}."
