"""Guards of the spoken stage (kespeechchat/speakable.py): glosses, markup, drift; cases from demo runs."""

from __future__ import annotations

import pytest

from kespeechchat.speakable import check_turns, drift, drop_glosses, markup


@pytest.mark.parametrize(
    "text,language,expected,n",
    [
        ("巴西利斯克（Basilisk）是一种传说中的生物。", "zh", "巴西利斯克是一种传说中的生物。", 1),
        ("纳尔逊·曼德拉·曼德拉（Nelson Mandela）是南非总统。", "zh", "纳尔逊·曼德拉是南非总统。", 2),
        ("纳尔逊·曼德拉·曼德拉是南非总统。", "zh", "纳尔逊·曼德拉是南非总统。", 1),
        ("He lives in Beijing (北京).", "en", "He lives in Beijing.", 1),
        # kept: a bracket that says something in the turn's own language
        ("It costs 5 dollars (about 4 euros).", "en", "It costs 5 dollars (about 4 euros).", 0),
        ("这是二氧化碳（一种气体）。", "zh", "这是二氧化碳（一种气体）。", 0),
        ("列奥纳多·达·芬奇画了蒙娜丽莎。", "zh", "列奥纳多·达·芬奇画了蒙娜丽莎。", 0),
    ],
)
def test_glosses_in_the_other_script_and_doubled_names_are_dropped(text, language, expected, n):
    assert drop_glosses(text, language) == (expected, n)


@pytest.mark.parametrize(
    "text,kind",
    [
        ("…的故事。- 「寻找魔法国度之一：…」 - 「…之二…」", "list_marker"),
        ("1. First do this\n2. Then that", "list_marker"),
        ("首先：\n一、准备材料\n二、开始", "list_marker"),
        ("这是**重点**。", "markdown"),
        ("## Steps", "markdown"),
        ("See [the docs](x) now.", "markdown"),
        ("Use the <b>bold</b> one.", "html"),
        ("a | b | c", "symbols"),
    ],
)
def test_markup_is_found_and_named(text, kind):
    hit = markup(text)
    assert hit is not None and hit.startswith(kind + ":"), hit


@pytest.mark.parametrize(
    "text",
    [
        "It grew 3.5 percent last year.",
        "Well, first you boil the water, then you add the leaves.",
        "明天是晴天，最高大概二十五摄氏度。",
        "The U.S. economy grew - slowly, but it grew.",
    ],
)
def test_plain_speech_has_no_markup(text):
    assert markup(text) is None


def test_a_sentence_added_by_the_spoken_pass_is_drift():
    src = "今天天气很好，我们去公园散步吧。"
    assert (
        drift(src, "今天天气不错，我们去公园走走吧。我理解了你的意思！", "zh") == "added «我理解了你的意思！»"
    )
    en = "Paris is the capital of France. It has many museums."
    got = drift(en, "Paris is the capital of France. I hope this helps you with your homework today!", "en")
    assert got is not None and got.startswith("added «I hope this helps")


def test_a_restating_sentence_made_of_the_turn_s_own_words_is_drift():
    # from a demo run: the spoken pass appended a sentence that re-explains the pun with its words
    src = (
        "当然可以。我的发型叫海浪，因为它每天都有蓬勃的浪头。这个双关语中，“浪头”一词具有双重含义："
        "它可以指发型中的浪卷，也可以引申为精力旺盛的样子。"
    )
    got = drift(src, src + "“浪头”在这里既指头发，也指的是能量和活力。", "zh")
    assert got is not None and got.startswith("longer by 12 content units")
    assert drift(src, "嗯，" + src, "zh") is None  # a filler is not content


def test_a_sentence_dropped_by_the_spoken_pass_is_drift():
    src = "Tea comes from one plant. Green tea is not oxidised, black tea is fully oxidised."
    got = drift(src, "So, tea comes from one plant.", "en")
    assert got is not None and got.startswith("dropped «Green tea is not oxidised")


def test_restyling_and_connectors_are_not_drift():
    en = "Paris is the capital of France. It has many museums."
    assert drift(en, "Well, Paris is the capital of France, and it has lots of museums.", "en") is None
    zh = "明天晴，最高二十五摄氏度，降水概率百分之十。"
    assert drift(zh, "明天是晴天，最高大概二十五摄氏度，降水的概率只有百分之十左右。", "zh") is None
    assert drift("茶是一种饮料。", "好的。其实，茶就是一种饮料。", "zh") is None


def test_check_turns_names_the_turn_and_leaves_user_turns_alone():
    roles = ["user", "assistant"]
    src = ["Tell me a story.", "Once upon a time there was a fox who lived in a forest."]
    assert check_turns(roles, src, src, "en") is None
    out = [src[0], src[1] + " I hope you enjoyed this wonderful little bedtime story!"]
    reason, detail = check_turns(roles, src, out, "en")
    assert reason == "spoken_drift" and detail.startswith("turn 1: added")
    reason, detail = check_turns(roles, src, [src[0], "- " + src[1]], "en")
    assert reason == "spoken_markup" and detail.startswith("turn 1: list_marker")
