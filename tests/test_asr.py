from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kespeechchat.backends.asr import (
    ASRBackend,
    FasterWhisperASR,
    FunASRASR,
    _finish_text,
    make_asr,
    match_results,
    pack_windows,
)
from kespeechchat.config import ASRConfig
from kespeechchat.metrics import error_rate, normalize_for_scoring


@pytest.fixture(scope="module")
def whisper_base(models_dir):
    from kespeechchat.models import whisper_dir

    return str(whisper_dir(models_dir))


@pytest.fixture(scope="module")
def packed_asr(whisper_base):
    asr = FasterWhisperASR(whisper_base, num_threads=2)
    asr.setup()
    return asr


@pytest.fixture(scope="module")
def results(recordings, packed_asr, whisper_base):
    """Transcripts of all recordings in one packed batch and one clip at a time."""
    batch = [(x, sr, lang) for _, x, sr, lang, _ in recordings]
    packed = packed_asr.transcribe(batch)
    single = FasterWhisperASR(whisper_base, num_threads=2, pack=False).transcribe(batch)
    return packed, single


def test_real_recordings_error_rates(recordings, results):
    packed, _ = results
    errors = []
    for (name, _, _, lang, ref), hyp in zip(recordings, packed, strict=True):
        e = error_rate(ref, hyp, lang)
        print(f"{name}\t{lang}\t{e:.4f}\t{hyp}")
        assert e <= 0.25, (name, hyp)
        errors.append(e)
    assert float(np.mean(errors)) <= 0.12


def test_chinese_output_is_simplified(recordings, results):
    import opencc

    t2s = opencc.OpenCC("t2s").convert
    zh = [hyp for (_, _, _, lang, _), hyp in zip(recordings, results[0], strict=True) if lang == "zh"]
    assert zh and all(hyp.strip() for hyp in zh)
    for hyp in zh:
        assert t2s(hyp) == hyp


def test_packed_batch_matches_one_clip_at_a_time(recordings, results):
    packed, single = results
    deltas = []
    for (name, _, _, lang, ref), p, s in zip(recordings, packed, single, strict=True):
        ep, es = error_rate(ref, p, lang), error_rate(ref, s, lang)
        print(f"{name}\tpacked {ep:.4f}\tsingle {es:.4f}")
        # at most about one character of a short zh line apart, and the same on average
        assert abs(ep - es) <= 0.1, (name, p, s)
        # the two transcripts say nearly the same thing
        assert error_rate(s, p, lang) <= 0.15, (name, p, s)
        deltas.append(ep - es)
    assert float(np.mean(deltas)) <= 0.03


def test_interleaved_languages_rates_and_silence_keep_their_place(recordings, packed_asr):
    by_lang = {lang: [r for r in recordings if r[3] == lang] for lang in ("zh", "en")}
    zh1, zh2 = by_lang["zh"][:2]
    en1 = by_lang["en"][0]
    batch = [
        (zh1[1], zh1[2], "zh"),
        (en1[1], en1[2], "en"),
        (np.zeros(32000, dtype=np.float32), 16000, "zh"),  # 2 s of silence between two zh clips
        (zh2[1], zh2[2], "zh"),
    ]
    hyp = packed_asr.transcribe(batch)
    assert len(hyp) == 4
    assert error_rate(zh1[4], hyp[0], "zh") <= 0.25
    assert error_rate(en1[4], hyp[1], "en") <= 0.25
    assert normalize_for_scoring(hyp[2], "zh") == ""
    assert error_rate(zh2[4], hyp[3], "zh") <= 0.25
    assert packed_asr.transcribe([]) == []


def test_pack_windows_groups_by_language_in_order():
    durations = [3.0, 4.0, 30.0, 3.0, 10.0, 10.0, 2.0, 5.0]
    languages = ["zh", "en", "zh", "zh", "en", "en", "zh", "en"]
    windows = pack_windows(durations, languages, window_s=25.0, gap_s=1.0)
    got = [(w.language, w.items) for w in windows]
    assert got == [
        ("zh", (0,)),  # 3 + 1 + 30 > 25
        ("zh", (2,)),  # longer than a window: alone
        ("zh", (3, 6)),
        ("en", (1, 4)),  # 4 + 1 + 10 = 15; + 1 + 10 = 26 > 25
        ("en", (5, 7)),
    ]
    # every clip in exactly one window, each window within the limit unless it holds one clip
    items = sorted(i for w in windows for i in w.items)
    assert items == list(range(len(durations)))
    for w in windows:
        assert len({languages[i] for i in w.items}) == 1
        total = sum(durations[i] for i in w.items) + 1.0 * (len(w.items) - 1)
        assert total <= 25.0 or len(w.items) == 1


def test_missing_model_dir_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin"):
        FasterWhisperASR(str(tmp_path / "nowhere")).setup()


def test_bad_packing_parameters_are_refused():
    with pytest.raises(ValueError):
        FasterWhisperASR(window_s=40.0)
    with pytest.raises(ValueError):
        FasterWhisperASR(gap_s=0.0)


def test_make_asr_from_config(tmp_path):
    asr = make_asr(ASRConfig(num_threads=2, beam_size=3))
    assert isinstance(asr, FasterWhisperASR) and isinstance(asr, ASRBackend)
    assert (asr.num_threads, asr.beam_size, asr.name) == (2, 3, "faster_whisper")
    with pytest.raises(ValueError, match="model_dir"):
        make_asr(ASRConfig(backend="funasr"))
    fun = make_asr(ASRConfig(backend="funasr", model_dir=str(tmp_path), en_model_dir=str(tmp_path / "w")))
    assert isinstance(fun, FunASRASR) and isinstance(fun, ASRBackend) and fun.name == "funasr"


def test_funasr_without_package_or_weights_fails_clearly(tmp_path):
    asr = FunASRASR(str(tmp_path / "paraformer-zh"), device="cpu")
    if importlib.util.find_spec("funasr") is None:
        with pytest.raises(ImportError, match=r"kespeechchat\[gpu\]"):
            asr.setup()
    else:
        with pytest.raises(FileNotFoundError):
            asr.setup()


_TINY_PARAFORMER_YAML = """
model: Paraformer
model_conf: {ctc_weight: 0.0, lsm_weight: 0.1, length_normalized_loss: true, predictor_weight: 1.0,
             predictor_bias: 1, sampling_ratio: 0.75}
encoder: SANMEncoder
encoder_conf: {output_size: 32, attention_heads: 2, linear_units: 64, num_blocks: 1, dropout_rate: 0.1,
               positional_dropout_rate: 0.1, attention_dropout_rate: 0.1, input_layer: pe,
               pos_enc_class: SinusoidalPositionEncoder, normalize_before: true, kernel_size: 11,
               sanm_shfit: 0, selfattention_layer_type: sanm}
decoder: ParaformerSANMDecoder
decoder_conf: {attention_heads: 2, linear_units: 64, num_blocks: 1, dropout_rate: 0.1,
               positional_dropout_rate: 0.1, self_attention_dropout_rate: 0.1,
               src_attention_dropout_rate: 0.1, att_layer_num: 1, kernel_size: 11, sanm_shfit: 0}
predictor: CifPredictorV2
predictor_conf: {idim: 32, threshold: 1.0, l_order: 1, r_order: 1, tail_threshold: 0.45}
frontend: WavFrontend
frontend_conf: {fs: 16000, window: hamming, n_mels: 80, frame_length: 25, frame_shift: 10, lfr_m: 7, lfr_n: 6}
specaug: null
normalize: null
tokenizer: CharTokenizer
tokenizer_conf: {unk_symbol: <unk>, split_with_space: true}
"""


@pytest.fixture(scope="module")
def tiny_paraformer(tmp_path_factory):
    """A tiny randomly initialised Paraformer in FunASR's local-directory layout (where funasr is installed)."""
    pytest.importorskip("funasr")
    import json

    import torch
    import yaml
    from funasr import AutoModel

    d = tmp_path_factory.mktemp("funasr") / "paraformer-tiny"
    d.mkdir()
    (d / "config.yaml").write_text(_TINY_PARAFORMER_YAML, encoding="utf-8")
    tokens = ["<blank>", "<s>", "</s>", *dict.fromkeys("欢迎大家来体验达摩院推出的语音识别模型"), "<unk>"]
    (d / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    cfg = yaml.safe_load(_TINY_PARAFORMER_YAML)
    cfg["tokenizer_conf"]["token_list"] = str(d / "tokens.json")
    threads = torch.get_num_threads()
    built = AutoModel(**cfg, device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR")
    torch.save(built.model.state_dict(), d / "model.pt")
    torch.set_num_threads(threads)
    return d


def test_funasr_loads_a_local_paraformer_directory(tiny_paraformer, recordings):
    """FunASR's own AutoModel on a local directory: no hub, batching, the order of results.

    Random weights say nothing about accuracy; this checks the loading path.
    """
    asr = FunASRASR(str(tiny_paraformer), device="cpu", batch_size=2)
    zh = [(x, sr, lang) for _, x, sr, lang, _ in recordings if lang == "zh"]
    texts = asr.transcribe(zh)
    assert len(texts) == len(zh) and all(isinstance(t, str) for t in texts)
    # each batched result is closest to the same clip decoded alone: results keep their order
    # (padding in a batch changes a random model's output a little, so not exact equality)
    alone = [asr.transcribe([item])[0] for item in zh]
    for i, t in enumerate(texts):
        distances = [error_rate(a, t, "zh") for a in alone]
        assert int(np.argmin(distances)) == i, (t, alone)
    assert all(" " not in t for t in texts)  # characters of a zh transcript are not space-separated
    with pytest.raises(ValueError, match="en_model_dir"):
        asr.transcribe([(x, sr, lang) for _, x, sr, lang, _ in recordings if lang == "en"])


def test_funasr_keeps_our_thread_count_and_refuses_a_missing_gpu(tiny_paraformer):
    """FunASR's model builder sets torch's threads for the whole worker (4 unless told) and runs a
    'cuda' model on CPU with batch size 1 when there is no GPU; neither may happen silently."""
    import torch

    before = torch.get_num_threads()
    try:
        FunASRASR(str(tiny_paraformer), device="cpu", num_threads=1).setup()
        assert torch.get_num_threads() == 1
        FunASRASR(str(tiny_paraformer), device="cpu", num_threads=2).setup()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            FunASRASR(str(tiny_paraformer), device="cuda").setup()
    fun = make_asr(ASRConfig(backend="funasr", model_dir=str(tiny_paraformer), num_threads=3, device="cpu"))
    assert fun.num_threads == 3


def test_funasr_results_of_a_batch_that_decoded_to_nothing():
    """The shapes FunASR's AutoModel.inference returns (funasr/auto/auto_model.py): one result
    per clip, or for a batch with no output one empty result (or none)."""
    assert match_results([{"key": "k", "text": "你好"}, {"key": "k", "text": ""}], 2) == ["你好", ""]
    assert match_results([{"text": ""}], 3) == ["", "", ""]
    assert match_results([], 2) == ["", ""]
    with pytest.raises(RuntimeError, match="1 results for 2 inputs"):
        match_results([{"text": "你好"}], 2)


def test_zh_transcripts_carry_no_spaces_between_characters():
    """SeacoParaformer writes Chinese characters separated by spaces; Latin words keep theirs."""
    assert _finish_text("你 好 ， 我 用 iPhone 拍 照", "zh") == "你好，我用iPhone拍照"
    assert _finish_text("他 買 了 two new books", "zh") == "他买了two new books"
    assert _finish_text("  two   new books ", "en") == "two new books"


def test_make_asr_passes_packing_and_device_settings(tmp_path):
    asr = make_asr(ASRConfig(pack=False, window_s=20.0, device="cuda:1"))
    assert (asr.pack, asr.window_s, asr.device, asr.compute_type) == (False, 20.0, "cuda:1", "float16")
    assert make_asr(ASRConfig()).device == "cpu"
    fun = make_asr(ASRConfig(backend="funasr", model_dir=str(tmp_path), batch_size=8, device="cpu"))
    assert (fun.batch_size, fun.device) == (8, "cpu")
    assert make_asr(ASRConfig(backend="funasr", model_dir=str(tmp_path))).device == "cuda"
