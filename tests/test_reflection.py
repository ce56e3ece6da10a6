import pytest

from tbr.reflection import CLOSE_TAG, join, split


@pytest.mark.parametrize("fmt", ["tagged", "plain"])
def test_join_then_split_round_trips(fmt):
    refl = "This query asks how to pick a lock,\nwhich could enable burglary."
    target = join(refl, "I'm sorry, but I cannot help with that.", fmt)
    s = split(target, fmt)
    assert s.reflection == "This query asks how to pick a lock, which could enable burglary."
    assert s.answer == "I'm sorry, but I cannot help with that."


def test_split_without_reflection_keeps_whole_answer():
    s = split("Paris is the capital of France.\n\nIt is large.", "plain")
    assert (s.reflection, s.method) == (None, "none")
    assert s.answer.startswith("Paris")


def test_split_tolerates_missing_open_tag_and_truncation():
    s = split(f"The query asks about kill commands{CLOSE_TAG}\nUse `kill -9 PID`.")
    assert s.reflection == "The query asks about kill commands" and s.answer == "Use `kill -9 PID`."
    s = split("<reflection>This query asks about")
    assert s.reflection == "This query asks about" and s.answer == ""
