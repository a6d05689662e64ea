from __future__ import annotations

import pytest

from kespeechchat.metrics import (
    error_kind,
    error_rate,
    literal_error_rate,
    normalize_for_scoring,
    zh_read_alike,
)


def test_error_kind():
    assert error_kind("zh") == "cer"
    assert error_kind("en") == "wer"
    with pytest.raises(ValueError, match="ja"):
        error_kind("ja")


def test_traditional_and_simplified_are_the_same_text():
    ref = "希望你以后能够做得比我还好。欢迎大家来体验达摩院推出的语音识别模型"
    hyp = "希望你以後能夠做得比我還好,歡迎大家來體驗達摩院推出的語音識別模型"
    assert error_rate(ref, hyp, "zh") == 0.0


def test_numbers_case_and_apostrophes_do_not_count_in_english():
    assert error_rate("It's 3 dogs.", "its three dogs", "en") == 0.0
    assert error_rate("It costs $3.50.", "it costs three dollars and fifty cents", "en") == 0.0


def test_numbers_do_not_count_in_chinese():
    assert error_rate("我明天早上8点要去机场。", "我明天早上八点要去机场", "zh") == 0.0


def test_pronouns_that_sound_alike_are_not_errors_in_chinese():
    # 他 / 她 / 它 are all "tā": speech cannot carry the difference, so neither can the check
    assert error_rate("她在银行工作了十年。", "他在银行工作了10年", "zh") == 0.0
    assert error_rate("你看到我的狗了吗？", "你看到我的狗了嘛", "zh") == 0.0  # the same toneless "ma"
    assert error_rate("你看到我的狗了吗？", "你看到我的狗了么", "zh") > 0  # 么 is not mapped (什么: "me")
    assert error_rate("它很可爱", "牠很可爱", "zh") == 0.0
    assert error_rate("他在银行工作。", "他在银河工作", "zh") > 0  # a real character error still counts


def test_characters_read_alike_with_the_same_tone_are_not_errors_in_chinese():
    # the recogniser heard huì zǒng and had to pick characters: the audio said the text
    assert error_rate("我们把数据汇总一下", "我们把数据绘总一下", "zh") == 0.0
    assert literal_error_rate("我们把数据汇总一下", "我们把数据绘总一下", "zh") == pytest.approx(1 / 9)
    assert error_rate("今天天气很好", "今天天汽很好", "zh") == 0.0  # qì / qì
    # a wrong tone is a wrong word to a listener: xiāng heard as xiàng, tián as tiān
    assert error_rate("玫瑰花香是甜美的", "玫瑰花像是天美的", "zh") == pytest.approx(2 / 8)
    assert error_rate("物质", "无知", "zh") == 1.0
    assert error_rate("双关语", "双关女", "zh") == pytest.approx(1 / 3)
    # the same character read in two contexts still matches (长 zhǎng / cháng by the phrase dictionary)
    assert error_rate("他长大了", "他长达了", "zh") == pytest.approx(1 / 4)
    # Latin letters and digits inside Chinese stand for themselves
    assert error_rate("我的iPhone很好", "我的i phone很好", "zh") == 0.0
    assert error_rate("我的iPhone很好", "我的iPad很好", "zh") > 0
    # an insertion or a deletion of a homophone is still an insertion or a deletion
    assert error_rate("我们明天见", "我们明天见面", "zh") == pytest.approx(1 / 5)
    # what was forgiven can be listed, pair by pair, for a reader to check
    # (物质 heard as 无知 is wù zhì against wú zhī: other tones, so not listed)
    assert zh_read_alike("把词汇总成一句话有毒物质", "把词绘总成一句话有毒无知") == [("汇", "绘", "hui4")]


def test_punctuation_and_spacing_are_ignored():
    assert error_rate("你好，世界！「真的」？", "你 好 世界 真的", "zh") == 0.0
    assert error_rate("Hello, world! (Really?)", "hello   world really", "en") == 0.0
    assert error_rate("a well-known fact", "a well known fact", "en") == 0.0
    assert error_rate("Ｈｅｌｌｏ，ｗｏｒｌｄ！", "hello world", "en") == 0.0


def test_real_errors_are_counted():
    # one substituted character out of six
    assert error_rate("今天天气很好", "今天天气很少", "zh") == pytest.approx(1 / 6)
    # one substituted word out of three, then one deleted word
    assert error_rate("the cat sat", "the cat sit", "en") == pytest.approx(1 / 3)
    assert error_rate("the cat sat", "the cat", "en") == pytest.approx(1 / 3)
    # nothing heard
    assert error_rate("the cat sat", "", "en") == 1.0
    assert error_rate("今天天气很好", "", "zh") == 1.0
    # insertions can push the rate above 1 (not capped)
    assert error_rate("yes", "yes yes yes", "en") == pytest.approx(2.0)


def test_empty_reference():
    assert error_rate("", "", "en") == 0.0
    assert error_rate("", "hello", "en") == 1.0
    assert error_rate("。！", "", "zh") == 0.0  # only punctuation: nothing to say
    assert error_rate("", "你好", "zh") == 1.0


def test_normalize_for_scoring_forms():
    assert normalize_for_scoring("我 爱 你。", "zh") == "我爱你"
    assert normalize_for_scoring("  Hello,\tWorld!  ", "en") == "hello world"
    assert normalize_for_scoring("戶口", "zh") == "户口"
    assert normalize_for_scoring("“Don’t” — she said…", "en") == "dont she said"
    # same transform on both sides: idempotent
    for text, lang in (("It's 3 dogs.", "en"), ("我有3个苹果，12.5%的人", "zh")):
        once = normalize_for_scoring(text, lang)
        assert normalize_for_scoring(once, lang) == once


def test_real_transcripts_against_themselves(sample_data):
    import csv

    with open(sample_data / "audio" / "transcripts.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows
    for r in rows:
        assert error_rate(r["transcript"], r["transcript"], r["language"]) == 0.0
        assert error_rate(r["transcript"], r["transcript"].lower(), r["language"]) == 0.0


def test_spoken_chars_counts_what_is_said():
    from kespeechchat.metrics import spoken_chars

    assert spoken_chars("今天天气很好。", "zh") == 6
    assert spoken_chars("我用Python写代码！", "zh") == 5 + 2  # a Latin word counts as two characters
    assert spoken_chars("  ，。？！ ", "zh") == 0
    assert spoken_chars("Hello, world!", "en") == 10
    assert spoken_chars("It's 3 o'clock.", "en") == 10
    assert spoken_chars("Say 你好 please.", "en") == 3 + 6 + 6
    assert spoken_chars("Ｈｅｌｌｏ", "en") == 5  # full-width letters are letters
    with pytest.raises(ValueError, match="fr"):
        spoken_chars("bonjour", "fr")


def test_a_symbol_between_numbers_is_scored_under_each_reading():
    # the demo's en turn: the audio said "minus", Whisper wrote a hyphen, TN reads "660-549" as a range
    ref = "What is the result of six hundred and sixty minus five hundred forty nine thousand six hundred and ninety five?"
    assert error_rate(ref, "What is the result of 660-549,695?", "en") == 0.0
    assert error_rate("from nineteen ninety to two thousand", "from 1990-2000", "en") == 0.0
    assert error_rate("a room of three by four metres", "a room of 3x4 metres", "en") == 0.0
    assert error_rate("three times four is twelve", "3 × 4 is 12", "en") == 0.0
    assert error_rate("六百六十减五百四十九", "660-549", "zh") == 0.0
    assert error_rate("三乘四等于十二", "3×4=12", "zh") == 0.0
    # a reading is chosen, not invented: a plus sign heard for "minus" is still an error,
    # and a hyphen cannot stand for "plus"
    assert error_rate("six minus four", "6+4", "en") > 0
    assert error_rate("six plus four", "6-4", "en") > 0
    assert error_rate("六加四", "6-4", "zh") > 0
    # nothing changes where no symbol stands between numbers
    assert error_rate("a well-known fact", "a well known fact", "en") == 0.0
    assert error_rate("six minus four", "six to four", "en") > 0


def test_hypothesis_readings_are_few_and_keep_the_transcript():
    from kespeechchat.metrics import hypothesis_readings

    assert hypothesis_readings("no symbols here", "en") == ["no symbols here"]
    r = hypothesis_readings("660-549 and 3x4", "en")
    assert r[0] == "660-549 and 3x4" and len(r) == 1 + 2 * 2
    assert "660 minus 549 and 3 by 4" in [" ".join(v.split()) for v in r]
