"""Text normalisation with the real WeTextProcessing grammars: expected spoken forms, zh and en."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tn", reason="WeTextProcessing is in the 'embedded' extra")

from kespeechchat import textnorm  # noqa: E402
from kespeechchat.textnorm import normalize, normalize_many  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

ZH_CASES = [
    # numbers and decimals
    ("我有3个苹果。", "我有三个苹果。"),
    ("全国共有1,234,567人。", "全国共有一百二十三万四千五百六十七人。"),
    ("圆周率约等于3.14。", "圆周率约等于三点一四。"),
    ("需要3-5天。", "需要三到五天。"),
    ("需要3~5天。", "需要三到五天。"),
    ("有10+年经验。", "有十多年经验。"),
    ("他得了第3名。", "他得了第三名。"),
    ("三分之一写作1/3。", "三分之一写作三分之一。"),
    # percentages
    ("占比12.5%。", "占比百分之十二点五。"),
    ("利润下降了-3.2%。", "利润下降了负百分之三点二。"),
    # currency
    ("价格是25.5元。", "价格是二十五点五元。"),
    ("一杯咖啡￥25。", "一杯咖啡二十五元。"),
    ("这本书¥30元。", "这本书三十元。"),
    ("它卖$3.50。", "它卖三点五美元。"),
    ("门票€20一张。", "门票二十欧元一张。"),
    ("预算2.5亿美元。", "预算二点五亿美元。"),
    # dates and times
    ("今天是2024年3月5日。", "今天是二零二四年三月五日。"),
    ("会议定在2024-03-05举行。", "会议定在二零二四年三月五日举行。"),
    ("现在是下午3:30。", "现在是下午三点三十分。"),
    ("比赛在12:30:45结束。", "比赛在十二点三十分四十五秒结束。"),
    ("二十世纪90年代", "二十世纪九十年代"),
    # phone numbers
    ("他的电话是13812345678。", "他的电话是幺三八幺二三四五六七八。"),
    ("请拨打010-12345678。", "请拨打零一零一二三四五六七八。"),
    # units
    ("温度是-5℃。", "温度是负五摄氏度。"),
    ("速度100km/h。", "速度每小时一百公里。"),
    ("身高1.8m，体重70kg。", "身高一点八米，体重七十千克。"),
    ("容量500ml。", "容量五百毫升。"),
    ("PM2.5超标。", "PM二点五超标。"),
    # symbols and maths
    ("2+3=5", "二加三等于五"),
    ("40 * 52 = 2080", "四十乘五十二等于两千零八十"),
    ("100 / 4 = 25", "一百除以四等于二十五"),
    ("x>5时成立。", "x大于五时成立。"),
    ("2^10=1024", "二的十次方等于一千零二十四"),
    ("比分3:2。", "比分三比二。"),
    # abbreviations, lists
    ("No.1中学", "第一中学"),
    ("1. 第一步", "一、第一步"),
    ("iPhone 15很好用。", "iPhone十五很好用。"),
    # what is spoken stays; punctuation stays full-width
    ("哪儿啊，这儿好玩儿！", "哪儿啊，这儿好玩儿！"),
    ("嗯，好的，没问题。", "嗯，好的，没问题。"),
    ('他说:"你好"', "他说：“你好”"),
    ("你好,世界!", "你好，世界！"),
]

EN_CASES = [
    # numbers and decimals
    ("I have 3 apples.", "I have three apples."),
    (
        "There are 1,234,567 people.",
        "There are one million two hundred thirty four thousand five hundred and sixty seven people.",
    ),
    ("It is 3.14 exactly.", "It is three point one four exactly."),
    ("Add 0.5 cups.", "Add zero point five cups."),
    ("Use 1/2 cup of sugar.", "Use one half cup of sugar."),
    ("The 21st century", "The twenty first century"),
    # percentages
    ("About 50% agreed.", "About fifty percent agreed."),
    ("Growth was 12.5% this year.", "Growth was twelve point five percent this year."),
    # currency (the grammar alone says "three point five dollars")
    ("It costs $3.50 today.", "It costs three dollars and fifty cents today."),
    ("It costs $1.", "It costs one dollar."),
    ("Only $0.99!", "Only ninety nine cents!"),
    ("They raised $2.5 million.", "They raised two point five million dollars."),
    ("It was €5.", "It was five euros."),
    ("It was £3.20.", "It was three pounds and twenty pence."),
    ("Plans start at $5.99/month.", "Plans start at five dollars and ninety nine cents a month."),
    # dates and times
    ("On Jan 5, 2024 we met.", "On the fifth of January, twenty twenty four we met."),
    ("The launch is on 2024-03-05.", "The launch is on the fifth of March twenty twenty four."),
    ("The 1990s were fun.", "The nineteen nineties were fun."),
    ("The 2019-2020 season", "The twenty nineteen to twenty twenty season"),
    ("Meet at 3:30 pm.", "Meet at three thirty PM."),
    ("It was 9:05 a.m. on Monday.", "It was nine o five AM on Monday."),
    # phone numbers
    ("Call 555-123-4567.", "Call five five five, one two three, four five six seven."),
    ("Call (555) 123-4567.", "Call five five five, one two three, four five six seven."),
    ("Call +1 415 555 2671.", "Call plus one, four one five, five five five, two six seven one."),
    # units
    ("It is 5 km away.", "It is five kilometers away."),
    ("Buy 10kg of rice.", "Buy ten kilograms of rice."),
    ("Add 1 kg of rice.", "Add one kilogram of rice."),
    (
        "Mount Everest is 8,849 m high.",
        "Mount Everest is eight thousand eight hundred and forty nine meters high.",
    ),
    ("It was -5°C outside.", "It was minus five degrees Celsius outside."),
    ("Set the oven to 350°F.", "Set the oven to three hundred and fifty degrees Fahrenheit."),
    ("It runs at 60 km/h.", "It runs at sixty kilometers per hour."),
    ("I work 3 hrs a day.", "I work three hours a day."),
    # words after numbers the grammar used to split ("one minute onth", "- per dalton y")
    ("1 month later, we met.", "One month later, we met."),
    ("(1 day)", "(one day)"),
    ("I paid 5 dollars per month.", "I paid five dollars per month."),
    ("It is 3x faster.", "It is three times faster."),
    # symbols and abbreviations
    ("2 + 2 = 4", "Two plus two equals four"),
    ("So 9 - 2 x 3 is 3.", "So nine minus two times three is three."),
    ("Then 9 - 6 equals 3.", "Then nine minus six equals three."),
    ("It takes 3-5 days.", "It takes three to five days."),
    ("Q&A", "Q and A"),
    ("He is my #1 fan.", "He is my number one fan."),
    ("See No. 5 on the list.", "See number five on the list."),
    ("Dr. Smith and Mr. Jones met.", "Doctor Smith and Mister Jones met."),
    ("Fruits, e.g. apples, are sweet.", "Fruits, for example apples, are sweet."),
    ("Apples, pears, etc.", "Apples, pears, et cetera."),
    ("Lakers vs. Celtics", "Lakers versus Celtics"),
    ("Open 24/7.", "Open twenty four seven."),
]


@pytest.mark.parametrize(("written", "spoken"), ZH_CASES, ids=[c[0] for c in ZH_CASES])
def test_zh(written: str, spoken: str) -> None:
    assert normalize(written, "zh") == spoken


@pytest.mark.parametrize(("written", "spoken"), EN_CASES, ids=[c[0] for c in EN_CASES])
def test_en(written: str, spoken: str) -> None:
    assert normalize(written, "en") == spoken


def test_case_counts() -> None:
    assert len(ZH_CASES) >= 30 and len(EN_CASES) >= 30


def test_lines_are_kept_and_blank_lines_dropped() -> None:
    assert normalize("Line one.\n\n  Line 2 has 3 items.\r\n", "en") == "Line one.\nLine two has three items."
    assert normalize("第1行。\n\n第2行。", "zh") == "第一行。\n第二行。"


def test_plain_text_is_unchanged() -> None:
    text = "Tell me about the history of the Great Wall, please."
    assert normalize(text, "en") == text
    assert normalize("请介绍一下长城的历史。", "zh") == "请介绍一下长城的历史。"


def test_empty_and_whitespace() -> None:
    assert normalize("", "en") == ""
    assert normalize(" \n\t\u200b ", "zh") == ""


def test_full_width_digits_are_read() -> None:
    assert normalize("我有３个苹果。", "zh") == "我有三个苹果。"


def test_unsupported_language() -> None:
    with pytest.raises(ValueError, match="no text normalisation"):
        normalize("Bonjour", "fr")
    with pytest.raises(TypeError):
        normalize(None, "en")  # type: ignore[arg-type]


def test_normalize_many() -> None:
    assert normalize_many(["I have 2 cats.", "I have 1 dog."], "en") == [
        "I have two cats.",
        "I have one dog.",
    ]


def test_same_normaliser_per_process() -> None:
    assert textnorm.get_normalizer("zh") is textnorm.get_normalizer("zh")
    assert textnorm.get_normalizer("en") is textnorm.get_normalizer("en")


def test_zh_grammar_compiles_into_the_cache_dir_not_site_packages(tmp_path: Path) -> None:
    """A fresh process with an empty cache compiles the zh grammar there and writes nothing into the package."""
    import tn

    pkg = Path(tn.__file__).parent
    before = {p: p.stat().st_mtime_ns for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    cache = tmp_path / "cache"
    code = (
        "from kespeechchat.textnorm import normalize, cache_root; "
        "print(cache_root()); print(normalize('我有3个苹果，嗯。', 'zh'))"
    )
    env = {**os.environ, "KESPEECHCHAT_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    root, spoken = out.stdout.strip().splitlines()[-2:]
    assert Path(root) == cache
    assert spoken == "我有三个苹果，嗯。"
    fsts = sorted(p.name for p in cache.rglob("*.fst"))
    assert fsts == ["zh_tn_tagger.fst", "zh_tn_verbalizer.fst"]
    assert not any(p.name.startswith(".build-") for p in cache.rglob("*"))
    after = {p: p.stat().st_mtime_ns for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert after == before


@pytest.mark.parametrize(
    "text,expected",
    [
        ("第二次世界大战（1939-1945）", "第二次世界大战（一九三九年到一九四五年）"),
        ("他生于1950–2020年", "他生于一九五零年到二零二零年"),
        ("COVID-19疫情", "COVID十九疫情"),
        ("需要2-3个小时。", "需要两到三个小时。"),
        ("温度是-5℃。", "温度是负五摄氏度。"),
    ],
)
def test_zh_year_spans_and_names_with_numbers_are_not_subtractions(text, expected):
    assert normalize(text, "zh") == expected
