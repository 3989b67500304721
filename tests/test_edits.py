"""SEARCH/REPLACE and whole-file parsing, applying, and the messages a model can act on."""

from autoresearch.agents.edits import (
    apply_edits,
    closest_lines,
    parse_reply,
    retry_message,
    summarize_change,
)

TRAIN = "import math\n\nLEARNING_RATE = 0.01\nBATCH_SIZE = 32\n\n\ndef main():\n    pass\n"

REPLY = """I think the learning rate is too low.

Description: double the learning rate, the loss was still falling

train.py
```python
<<<<<<< SEARCH
LEARNING_RATE = 0.01
=======
LEARNING_RATE = 0.02
>>>>>>> REPLACE
```
"""


def editable(path: str) -> bool:
    return path == "train.py" or path.startswith("model/")


def test_parses_description_and_search_replace_block():
    r = parse_reply(REPLY)
    assert r.description == "double the learning rate, the loss was still falling"
    assert len(r.edits) == 1
    e = r.edits[0]
    assert (e.path, e.search, e.replace) == ("train.py", "LEARNING_RATE = 0.01\n", "LEARNING_RATE = 0.02\n")


def test_applies_a_matching_block():
    res = apply_edits({"train.py": TRAIN}, parse_reply(REPLY).edits, editable)
    assert res.ok and res.changed == {"train.py"}
    assert "LEARNING_RATE = 0.02\nBATCH_SIZE = 32" in res.files["train.py"]


def test_several_blocks_reuse_the_previous_path():
    text = ("train.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.01\n=======\nLEARNING_RATE = 0.03\n>>>>>>> REPLACE\n"
            "<<<<<<< SEARCH\nBATCH_SIZE = 32\n=======\nBATCH_SIZE = 64\n>>>>>>> REPLACE\n")
    res = apply_edits({"train.py": TRAIN}, parse_reply(text).edits, editable)
    assert res.ok
    assert "LEARNING_RATE = 0.03\nBATCH_SIZE = 64\n" in res.files["train.py"]


def test_whole_file_block_headed_by_its_path():
    text = "Description: rewrite\n\nmodel/net.py\n```python\nWIDTH = 4\n```\n"
    r = parse_reply(text)
    assert [(e.path, e.search, e.replace) for e in r.edits] == [("model/net.py", None, "WIDTH = 4\n")]
    res = apply_edits({"train.py": TRAIN}, r.edits, editable)
    assert res.files["model/net.py"] == "WIDTH = 4\n" and res.changed == {"model/net.py"}


def test_prose_code_blocks_without_a_path_are_not_files():
    r = parse_reply("Here is an idea:\n```\nLEARNING_RATE = 3\n```\nDescription: nothing")
    assert r.edits == []


def test_trailing_whitespace_differences_still_match():
    text = "train.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.01   \n=======\nLEARNING_RATE = 0.5\n>>>>>>> REPLACE\n"
    res = apply_edits({"train.py": TRAIN}, parse_reply(text).edits, editable)
    assert res.ok and "LEARNING_RATE = 0.5\n" in res.files["train.py"]


def test_non_matching_block_names_the_closest_lines():
    text = "train.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.1\n=======\nLEARNING_RATE = 0.2\n>>>>>>> REPLACE\n"
    res = apply_edits({"train.py": TRAIN}, parse_reply(text).edits, editable)
    assert not res.ok and not res.changed
    assert "did not match" in res.failures[0]
    assert "Did you mean these lines from train.py?\n```\nLEARNING_RATE = 0.01\n```" in res.failures[0]
    msg = retry_message(res, ["train.py"])
    assert "LEARNING_RATE = 0.01" in msg and "Send the whole proposal again" in msg


def test_closest_lines_finds_a_multi_line_run():
    assert closest_lines(TRAIN, "def main():\n    pas\n") == "def main():\n    pass"
    assert closest_lines(TRAIN, "completely unrelated text here\n") is None


def test_edits_outside_the_editable_set_are_refused():
    text = ("prepare.py\n<<<<<<< SEARCH\nX = 1\n=======\nX = 2\n>>>>>>> REPLACE\n"
            "train.py\n<<<<<<< SEARCH\nBATCH_SIZE = 32\n=======\nBATCH_SIZE = 16\n>>>>>>> REPLACE\n")
    files = {"train.py": TRAIN, "prepare.py": "X = 1\n"}
    res = apply_edits(files, parse_reply(text).edits, editable)
    assert res.refused == ["prepare.py"]
    assert res.files["prepare.py"] == "X = 1\n"
    assert res.changed == {"train.py"}
    msg = retry_message(res, ["train.py"])
    assert "prepare.py" in msg and "You may edit only: train.py" in msg and "other blocks applied" in msg


def test_paths_escaping_the_target_are_refused():
    text = "../evil.py\n```\nboom\n```\n"
    res = apply_edits({"train.py": TRAIN}, parse_reply(text).edits, lambda p: True)
    assert res.failures and not res.changed


def test_unclosed_block_is_a_problem_not_an_edit():
    r = parse_reply("train.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.01\n=======\nLEARNING_RATE = 1\n")
    assert r.edits == [] and "not closed" in r.problems[0]


def test_summary_of_a_one_line_change():
    new = TRAIN.replace("0.01", "0.02")
    assert summarize_change({"train.py": TRAIN}, {"train.py": new}) == \
        "train.py: LEARNING_RATE = 0.01 -> LEARNING_RATE = 0.02"
    assert summarize_change({"a.py": "x"}, {"a.py": "x", "b.py": "y"}) == "add b.py"
