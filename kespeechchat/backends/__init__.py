"""Model adapters (TTS, ASR, speaker, LLM) behind small interfaces, so stages work with any backend."""
