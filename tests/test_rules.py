"""Rule filters: each reason fires on what it should and not on near misses; a run on real data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kespeechchat.config import FilterConfig, SourceConfig
from kespeechchat.ingest import ingest_sources
from kespeechchat.rules import REASONS, check_dialogue

CFG = FilterConfig()
U, A = "user", "assistant"


def check(
    answer: str, question: str = "Can you help me with something today?", lang: str = "en"
) -> str | None:
    hit = check_dialogue([U, A], [question, answer], lang, CFG)
    return hit.reason if hit else None


def test_clean_dialogues_pass() -> None:
    assert check("Sure, I would be glad to help. What do you need?") is None
    assert check("当然可以，请问你需要什么帮助？", "你今天能帮我一个忙吗？", "zh") is None
    multi = ["Hi, who are you?", "I am a friendly assistant.", "What can you do?", "I can answer questions."]
    assert check_dialogue([U, A, U, A], multi, "en", CFG) is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Here it is:\n```python\nprint('hi')\n```", "code_block"),
        ("def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nx = add(3, 4);", "code_block"),
        ('#include <stdio.h>\nint main() {\n    printf("hi");\n    return 0;\n}', "code_block"),
        ("The answer is $\\frac{1}{2}$ of the total.", "latex"),
        ("Solve $x^2 + 1 = 0$ for x.", "latex"),
        ("\\begin{equation} E = mc^2 \\end{equation}", "latex"),
        ("| Name | Age |\n|------|-----|\n| Tom | 3 |", "table"),
        ("See https://example.com/page for details.", "url"),
        ("Visit www.example.org to learn more.", "url"),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "tool_call"),
        ("<tool_call>search(query)</tool_call>", "tool_call"),
        ("Dear {{customer_name}}, thank you.", "template_placeholder"),
        ("Best regards, [Your Name]", "template_placeholder"),
        ("Please contact <PLACEHOLDER> for help.", "template_placeholder"),
        ("Fill in the blank: he was very _____ to hear it.", "template_placeholder"),
        ("他听到这个消息时很＿＿＿。", "template_placeholder"),
        # Python without semicolons: assignments of literals and method-call statements
        (
            "Here is the program:\n# define the list\nmy_list = [1, 3, 5]\nmy_list.reverse()\nprint(my_list)",
            "code_block",
        ),
        ("二氧化碳溶于水：\n\nCO2 + H2O -> H2CO3\n\n这是一个可逆反应。", "latex"),
        ("Carbonic acid splits: H2CO3 ⇌ HCO3- + H+.", "latex"),
        ('Here it is: {"name": "John", "age": 25}', "structured_data"),
        ('输出："{\\"姓名\\": \\"John\\", \\"年龄\\": 25}"', "structured_data"),  # the demo's, escaped
        ('{\n    "姓名": "John",\n    "年龄": 25\n}', "structured_data"),
        ("The settings are {'volume': 3, 'mode': 'quiet'}.", "structured_data"),
        ("Great job! 🎉🎉🎉", "emoji_run"),
        ("So fun 😀 😂 🥳 today", "emoji_run"),
    ],
)
def test_content_rules_fire(answer: str, reason: str) -> None:
    assert check(answer) == reason


@pytest.mark.parametrize(
    "answer",
    [
        "You can use a for loop; it repeats the steps.",  # code words in prose
        "It costs $5 and the other one costs $10.",  # dollars, not math
        "Prices range from $5-$10 depending on size.",
        "Choose option A | B when you are unsure.",  # a pipe, not a table
        "The site is called example dot com.",
        "My name is Tom and I like cats.",  # no placeholder
        "Use <b>bold</b> text sparingly.",  # html tag, not a placeholder
        "I love it 😀 and you 😂.",  # two emoji, not a run
        "The set {a, b} has two elements.",  # braces without quoted keys
        '{"name": "John"} is a JSON object with one key.',  # one key: a word about JSON, said aloud
        'He said "yes": then left, and "no": never again.',  # quoted words and colons, no braces
        "1. Mix the flour.\n2. Add the eggs.\n3. Bake for twenty minutes.",  # a list, not code
        "If x = 5 then the total is 10.\nThat is all there is to it.\nEasy, right?",  # one equation in prose
        "Go from step 1 -> step 2 -> step 3 and you are done.",  # arrows without formulas
        "The USA -> UK route takes seven hours.",  # capitals but no chemical formula
        "Water is H2O and carbon dioxide is CO2.",  # formulas without a reaction
        "Name it my_file or my__file, either works.",  # underscores, not a blank
        "First part.\n\n___\n\nSecond part.",  # a markdown rule line, not a blank
    ],
)
def test_content_rules_do_not_fire(answer: str) -> None:
    assert check(answer) is None


def test_turn_too_short_and_long() -> None:
    assert check("Y") == "turn_too_short"
    assert check("Ok") is None
    assert check("word " * 200) == "turn_too_long"  # 1000 chars > 900 (en)
    assert check("word " * 170) is None  # 850 chars
    zh_q = "请介绍一下长城。"
    assert check("长城" * 151, zh_q, "zh") == "turn_too_long"  # 302 chars > 300 (zh)
    assert check("长城很长。" * 50, zh_q, "zh") is None  # 250 chars
    strict = FilterConfig(max_turn_chars_en=20)
    hit = check_dialogue([U, A], ["Tell me a story.", "Once upon a time there was a cat."], "en", strict)
    assert hit is not None and hit.reason == "turn_too_long" and "turn 1 (assistant)" in hit.detail


def test_too_many_turns() -> None:
    texts = ["Hello there, friend.", "Hello to you too."] * 5
    roles = [U, A] * 5
    hit = check_dialogue(roles, texts, "en", CFG)
    assert hit is not None and hit.reason == "too_many_turns"
    assert check_dialogue(roles[:8], texts[:8], "en", CFG) is None


def test_language_unsupported() -> None:
    hit = check_dialogue([U, A], ["Bonjour, ça va ?", "Oui, très bien, merci."], "other", CFG)
    assert hit is not None and hit.reason == "language_unsupported"


def test_language_mismatch() -> None:
    hit = check_dialogue(
        [U, A],
        ["请把这句话翻译成英文：我今天很开心。", "I am very happy today, and I hope you are happy too."],
        "zh",
        CFG,
    )
    assert hit is not None and hit.reason == "language_mismatch" and "turn 1" in hit.detail
    # A French answer in an English dialogue.
    hit = check_dialogue(
        [U, A],
        [
            "Translate into French: good morning everyone",
            "Bonjour à tous, je vous souhaite une bonne journée.",
        ],
        "en",
        CFG,
    )
    assert hit is not None and hit.reason == "language_mismatch"
    # Short turns are not judged ("OK" would come out as anything).
    assert check_dialogue([U, A], ["你能帮我吗？我需要一些建议。", "OK，没问题。"], "zh", CFG) is None
    assert check_dialogue([U, A], ["Say yes in Chinese.", "是的"], "en", CFG) is None


def test_detail_names_turn_and_match() -> None:
    hit = check_dialogue([U, A], ["Where can I read more?", "Read https://example.com/a now."], "en", CFG)
    assert hit is not None
    assert (
        hit.reason == "url" and "turn 1 (assistant)" in hit.detail and "https://example.com/a" in hit.detail
    )


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        check_dialogue([U], ["a", "b"], "en", CFG)


def test_real_data(sample_data: Path) -> None:
    """All sample text data through ingest and the rules: every reason is a known code, the
    content rules find real code/tables/links, and the plain identity chats pass."""
    sources = [SourceConfig(path=str(p)) for p in sorted((sample_data / "text").glob("*.json"))]
    rows, _, _ = ingest_sources(sources, seed=0)
    counts: Counter[str] = Counter()
    per_file: dict[str, Counter[str]] = {}
    for r in rows:
        hit = check_dialogue(r["roles"], r["source_texts"], r["language"], CFG)
        reason = hit.reason if hit else "pass"
        counts[reason] += 1
        per_file.setdefault(r["source_file"], Counter())[reason] += 1
    assert set(counts) <= set(REASONS) | {"pass"}
    assert counts["code_block"] >= 20
    assert counts["table"] >= 3
    assert counts["url"] >= 3
    assert counts["language_unsupported"] >= 5  # translation tasks into other languages
    assert counts["structured_data"] >= 2  # "generate a JSON string from …" tasks
    fastchat = per_file["en_fastchat_dummy_conversation.json"]
    assert fastchat["pass"] >= 0.95 * sum(fastchat.values())
    assert counts["pass"] >= 0.5 * len(rows)
