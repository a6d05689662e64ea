"""Language id with the bundled fastText lite model and script counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kespeechchat.langid import detect_dialogue_language, detect_language, script_counts, turn_languages

REPO = Path(__file__).resolve().parent.parent

SAMPLES = [
    ("你好，今天天气怎么样？", "zh"),
    ("请用三句话介绍一下北京的历史。", "zh"),
    ("這是一個繁體中文的句子。", "zh"),
    ("Hello, how are you today?", "en"),
    ("Describe the process of making crepes in a few steps.", "en"),
    ("今日はいい天気ですね。", "other"),  # Japanese: kana
    ("東京に行きました", "other"),  # Japanese: Han + kana
    ("Bonjour, comment allez-vous aujourd'hui ?", "other"),
    ("Ich bin heute nicht zu Hause, aber morgen schon.", "other"),
    ("¿Dónde está la biblioteca?", "other"),
    ("안녕하세요, 만나서 반갑습니다.", "other"),
    ("Привет, как дела?", "other"),
]


@pytest.mark.parametrize(("text", "lang"), SAMPLES, ids=[s[0][:20] for s in SAMPLES])
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


def test_mixed_zh_en_is_zh() -> None:
    assert detect_language("请解释一下 machine learning 和 deep learning 的区别") == "zh"
    assert detect_language("我喜欢用Python写代码") == "zh"


def test_en_with_a_chinese_word_is_en() -> None:
    assert detect_language("The word 你好 means hello in Chinese.") == "en"


def test_short_english_that_the_lite_model_gets_wrong() -> None:
    # fastText lite says Italian (0.74) for this one; the function-word check makes it en.
    assert detect_language("Tell me who you are.") == "en"
    assert detect_language("You too!") == "en"


def test_no_letters_is_other() -> None:
    assert detect_language("12345 + 678") == "other"
    assert detect_language("😀😀😀") == "other"
    assert detect_language("") == "other"


def test_type_error() -> None:
    with pytest.raises(TypeError):
        detect_language(None)  # type: ignore[arg-type]


def test_dialogue_and_turns() -> None:
    texts = ["What is the capital of France?", "Paris. It has been the capital for centuries."]
    assert detect_dialogue_language(texts) == "en"
    assert turn_languages(texts) == ["en", "en"]
    mixed = [
        "把这句话翻译成英文：我爱你。",
        "The English translation is: I love you, and it is a very common phrase.",
    ]
    assert turn_languages(mixed) == ["zh", "en"]
    assert detect_dialogue_language(["你好，请问现在几点了？", "现在是下午三点。"]) == "zh"


def test_long_text_is_sampled() -> None:
    text = "这是一个很长的句子。" * 200_000  # 2,000,000 characters
    assert script_counts(text)["han"] <= 20_000
    assert detect_language(text) == "zh"


def test_no_network() -> None:
    """Detection in a fresh process where every socket connection fails."""
    code = (
        "import socket\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('network used')\n"
        "socket.socket.connect = boom\n"
        "socket.create_connection = boom\n"
        "from kespeechchat.langid import detect_language\n"
        "print(detect_language('Bonjour tout le monde, comment ça va ?'), detect_language('Hello there, my friend.'))\n"
    )
    env = {**os.environ, "FTLANG_CACHE": "/nonexistent/fasttext-cache"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["other", "en"]
