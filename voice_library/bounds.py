"""The space voice recipes are drawn from: the base voices, the warp and variant ranges, and the
F0 threshold that names a voice's gender. Shared by the search, the pool and the library builder."""

KOKORO_BASE_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# Median F0 (Hz) of each shipped voice, mean of one zh and one en sentence (pyworld dio+stonemask).
KOKORO_BASE_F0_HZ = {
    "jf_alpha": 258.0,
    "jf_gongitsune": 219.5,
    "jf_nezumi": 239.0,
    "jf_tebukuro": 320.0,
    "jm_kumo": 90.0,
}

MALE_F0_THRESHOLD_HZ = 165.0
BLEND_A_RANGE = (1.25, 1.9)
MAX_NEGATIVE_WEIGHT = 0.6
PITCH_RANGE = (0.8, 1.3)
FORMANT_RANGE = (0.88, 1.15)
# Prosodic variants, bounded by measurement (bench/voice_tradeoff.py, voice_library/README.md): at
# speed 0.9 / pitch -4 % and at 1.05 / +2 % the clarity probes stay as clear as the identity's
# centre; at 1.1 / +4 % Chinese CER rose from 0.042 to 0.058.
SPEED_RANGE = (0.9, 1.05)
VARIANT_PITCH_RANGE = (0.96, 1.02)
