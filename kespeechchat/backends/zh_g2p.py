"""Chinese text to Kokoro v1.0 phonemes, with the front end that misaki's default path leaves out.

Kokoro-82M v1.0 was trained on misaki's legacy Chinese phonemes (pinyin to IPA, tones as arrows).
misaki's ``ZHG2P()`` reads each jieba word with pypinyin's default dictionary and applies no tone
sandhi, so the TTS says 还钱 as hái qián, 一样 as yī yàng, 不对 as bù duì, 慢慢地 with dì. Its
version 1.1 front end has sandhi but writes another phoneme set (for Kokoro v1.1-zh), which v1.0
cannot read. This keeps the v1.0 phonemes and adds what a front end needs:

- segmentation with parts of speech over the whole run (jieba.posseg), merged for sandhi;
- pypinyin with the large phrase dictionary (pypinyin-dict) and a short list of fixes, so
  polyphonic characters are read by the word they are in;
- Mandarin tone sandhi (一 and 不 before a fourth tone, third-tone runs, neutral tones of particles
  and reduplications) by misaki's port of PaddleSpeech's rules, except its rule that reads every
  word ending in 的/地/得 as if it ended in the particle (``PARTICLE_FINALS``).

The cases are pinned in ``tests/test_zh_g2p.py``.
"""

from __future__ import annotations

import re
import threading

_HAN_SPLIT = re.compile("[\u4e00-\u9fff]+|[^\u4e00-\u9fff]+")

# Words pypinyin's dictionaries still get wrong in our texts (TONE3, neutral tone as 5).
PHRASE_FIXES: dict[str, list[list[str]]] = {
    "还钱": [["huan2"], ["qian2"]],
    "还书": [["huan2"], ["shu1"]],
    "还给": [["huan2"], ["gei3"]],
    "归还": [["gui1"], ["huan2"]],
    "数一数": [["shu3"], ["yi5"], ["shu3"]],
    "一会儿": [["yi2"], ["hui4"], ["er5"]],
    "散发": [["san4"], ["fa1"]],
    "得了": [["de2"], ["le5"]],
    # 长 alone is mostly the adjective cháng (很长, 多长, 更长); the verb zhǎng is in words
    "长得": [["zhang3"], ["de5"]],
    "长高": [["zhang3"], ["gao1"]],
    "长胖": [["zhang3"], ["pang4"]],
    "长出": [["zhang3"], ["chu1"]],
    # verb + 为 "as": wéi (pypinyin reads these wèi "for")
    **{
        w: [[p] for p in py.split()] + [["wei2"]]
        for w, py in {
            "引申": "yin3 shen1",
            "定": "ding4",
            "选": "xuan3",
            "命名": "ming4 ming2",
            "翻译": "fan1 yi4",
            "描述": "miao2 shu4",
            "解释": "jie3 shi4",
            "理解": "li3 jie3",
            "化": "hua4",
            "以此": "yi3 ci3",
        }.items()
        for w in [w + "为"]
    },
}

# The sandhi rules (PaddleSpeech's, as misaki ports them) make the last syllable of *any* word ending
# in 的, 地 or 得 neutral, as if it were the particle: 获得 huò de, 当地 dāng di, 目的 mù de. Only the
# particles are neutral; in a longer word the dictionary's reading stands (it says 觉得 jué de,
# 记得 jì de, but 获得 huò dé, 土地 tǔ dì, 目的 mù dì).
PARTICLE_FINALS = "的地得"

# Bumped whenever the phonemes of some text change, so that runs re-synthesise (the synthesize and
# repair stages hash it with their config).
ZH_G2P_VERSION = 2

_lock = threading.Lock()
_ready = False


def _load_dictionaries() -> None:
    """pypinyin's dictionaries are process-wide: load ours once."""
    global _ready
    with _lock:
        if _ready:
            return
        import jieba
        from pypinyin import load_phrases_dict, load_single_dict
        from pypinyin_dict.phrase_pinyin_data import large_pinyin

        large_pinyin.load()
        load_phrases_dict(PHRASE_FIXES)
        for word in PHRASE_FIXES:  # one word for the segmenter too, or the fix is never looked up
            jieba.add_word(word)
        load_single_dict({ord("地"): "de,di4"})  # alone, 地 is mostly the adverbial particle
        load_single_dict({ord("长"): "chang2,zhang3"})  # alone, mostly the adjective
        _ready = True


class ZhG2P:
    """``g2p(text) -> phonemes`` in Kokoro v1.0's Chinese phoneme set."""

    def __init__(self) -> None:
        from misaki.tone_sandhi import ToneSandhi

        _load_dictionaries()
        self._sandhi = ToneSandhi()

    def pinyin(self, text: str) -> list[tuple[str, list[str]]]:
        """(word, TONE3 syllables after sandhi) for each word of a Han-only run."""
        import jieba.posseg as psg
        from pypinyin import Style, lazy_pinyin

        out = []
        cut = self._sandhi.pre_merge_for_modify([(w, p) for w, p in psg.lcut(text)])
        for word, pos in cut:
            read = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True)
            syllables = read
            if len(read) == len(word):
                syllables = self._sandhi.modified_tone(word, pos, list(read))
                if len(word) > 1 and word[-1] in PARTICLE_FINALS and not read[-1].endswith("5"):
                    syllables[-1] = read[-1]
            out.append((word, syllables))
        return out

    def __call__(self, text: str) -> str:
        import cn2an
        from misaki.zh import ZHG2P

        if any(c.isdigit() for c in text):  # the pipeline's text normalisation did this already
            text = cn2an.transform(text, "an2cn")
        text = ZHG2P.map_punctuation(text)
        pieces = []
        for run in _HAN_SPLIT.findall(text):
            if "\u4e00" <= run[0] <= "\u9fff":
                words = self.pinyin(run)
                pieces.append(" ".join("".join(ZHG2P.py2ipa(s) for s in syl) for _, syl in words))
            else:
                pieces.append(run)
        return "".join(pieces).replace(chr(815), "")
