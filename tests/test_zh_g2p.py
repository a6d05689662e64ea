"""The Chinese front end of the Kokoro backend (kespeechchat/backends/zh_g2p.py): polyphonic
characters read by their word, and tone sandhi, in Kokoro v1.0's phoneme set."""

from __future__ import annotations

import pytest

from kespeechchat.backends.zh_g2p import ZhG2P


@pytest.fixture(scope="module")
def g2p() -> ZhG2P:
    return ZhG2P()


def syllables(g2p: ZhG2P, text: str) -> list[str]:
    return [s for _, syl in g2p.pinyin(text) for s in syl]


@pytest.mark.parametrize(
    "text,expected",
    [
        # 一 and 不: second tone before a fourth tone, fourth tone before the others
        ("一样", ["yi2", "yang4"]),
        ("一起", ["yi4", "qi3"]),
        ("不对", ["bu2", "dui4"]),
        ("不好", ["bu4", "hao3"]),
        # third tone before a third tone becomes second
        ("你好", ["ni2", "hao3"]),
        ("展览馆", ["zhan2", "lan2", "guan3"]),
        # polyphonic characters by their word
        ("银行", ["yin2", "hang2"]),
        ("行走", ["xing2", "zou3"]),
        ("长大", ["zhang3", "da4"]),
        ("长度", ["chang2", "du4"]),
        ("重新", ["chong2", "xin1"]),
        ("重要", ["zhong4", "yao4"]),
        ("音乐", ["yin1", "yue4"]),
        ("快乐", ["kuai4", "le4"]),
        ("首都", ["shou3", "du1"]),
        ("我们去银行还钱", ["wo3", "men5", "qu4", "yin2", "hang2", "huan2", "qian2"]),
        ("他还是来了", ["ta1", "hai2", "shi4", "lai2", "le5"]),
        ("他高兴地说", ["ta1", "gao1", "xing4", "de5", "shuo1"]),
        ("地球", ["di4", "qiu2"]),
        # found on the demo's rewritten zh turns: 长 alone is the adjective, 散发 fā, verb + 为 wéi
        ("这条路很长", ["zhe4", "tiao2", "lu4", "hen3", "chang2"]),
        ("多长时间", ["duo1", "chang2", "shi2", "jian1"]),
        ("她长得很漂亮", ["ta1", "zhang3", "de5", "hen3", "piao4", "liang5"]),
        ("他长高了", ["ta1", "zhang3", "gao1", "le5"]),
        ("校长", ["xiao4", "zhang3"]),
        ("它散发出香气", ["ta1", "san4", "fa1", "chu1", "xiang1", "qi4"]),
        ("引申为", ["yin3", "shen1", "wei2"]),
        ("定为", ["ding4", "wei2"]),
        ("因为", ["yin1", "wei4"]),
        ("他得了第一名", ["ta1", "de2", "le5", "di4", "yi1", "ming2"]),
        # 的/地/得 are neutral as particles, not at the end of a content word
        ("获得", ["huo4", "de2"]),
        ("当地", ["dang1", "di4"]),
        ("目的地", ["mu4", "di4", "di4"]),
        ("他的目的", ["ta1", "de5", "mu4", "di4"]),
        ("土地", ["tu3", "di4"]),
        ("随时随地", ["sui2", "shi2", "sui2", "di4"]),
        ("我觉得", ["wo3", "jue2", "de5"]),
        ("他慢慢地走", ["ta1", "man4", "man4", "de5", "zou3"]),
        ("美丽的花", ["mei3", "li4", "de5", "hua1"]),
    ],
)
def test_polyphones_and_tone_sandhi(g2p, text, expected):
    assert syllables(g2p, text) == expected


def test_phonemes_are_kokoro_v1_ipa_with_tone_arrows(g2p):
    ph = g2p("你好，我们一起去银行。")
    assert ph.startswith("ni↗xau↓")  # sandhi: ní hǎo
    assert "i↘ʨʰi↓" in ph and "i↗nxa↗ŋ" in ph
    assert "," in ph and ph.rstrip().endswith(".")  # punctuation mapped like misaki's
    assert g2p("我有3本书") == g2p("我有三本书")  # digits read as Chinese numbers


def test_front_end_version_is_part_of_the_tts_hash():
    """Runs made before a front-end change re-synthesise: the version goes into the stages' config."""
    from kespeechchat.backends.tts import tts_config_section
    from kespeechchat.backends.zh_g2p import ZH_G2P_VERSION
    from kespeechchat.config import TTSConfig

    assert tts_config_section(TTSConfig(backend="kokoro"))["zh_g2p"] == ZH_G2P_VERSION
    assert "zh_g2p" not in tts_config_section(TTSConfig(backend="kokoro", zh_frontend="misaki"))
    assert "num_threads" not in tts_config_section(TTSConfig(backend="kokoro", num_threads=4))
