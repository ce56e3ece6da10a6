import pytest

from tbr.reflection import CLOSE_TAG, OPEN_TAG, join, split


@pytest.mark.parametrize("fmt", ["tagged", "plain", "prose"])
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


def test_prose_is_the_papers_untagged_target():
    # Fig. 9's revised output: the reflection, then "Therefore," and the refusal, no tag, no break
    refl = (
        "Addressing issues with pets can be challenging, but it's important to handle them safely and legally"
    )
    target = join(refl, "I'm sorry, but I cannot fulfill that request.", "prose")
    assert target == (
        "Addressing issues with pets can be challenging, but it's important to handle them safely and "
        "legally. Therefore, I'm sorry, but I cannot fulfill that request."
    )
    assert OPEN_TAG not in target and "\n" not in target
    # a refusal that opens with another word continues the sentence in lower case, and is restored
    target = join("This query asks for a weapon.", "Sorry, I can't help.", "prose")
    assert target == "This query asks for a weapon. Therefore, sorry, I can't help."
    s = split(target, "prose")
    assert (s.reflection, s.answer, s.method) == (
        "This query asks for a weapon.",
        "Sorry, I can't help.",
        "prose",
    )


def test_prose_split_needs_a_sentence_opening_connector():
    # no connector, or one mid-sentence: the whole response is the answer
    for text in ("Paris is the capital of France.", "It rained, therefore, we stayed in."):
        s = split(text, "prose")
        assert (s.reflection, s.answer, s.method) == (None, text, "none")
    # a connector far into a long answer is ordinary reasoning, not a reflection
    long = "Step one is to add the numbers. " * 30 + "Therefore, the answer is 4."
    assert split(long, "prose").reflection is None
    # a tagged response is still split right when prose is asked
    s = split(f"{OPEN_TAG}This asks for X.{CLOSE_TAG}\nNo.", "prose")
    assert (s.reflection, s.answer, s.method) == ("This asks for X.", "No.", "tagged")
