"""The virtual speaker library: voice recipes (identities × prosodic variants) and their WORLD transforms."""

from voice_library.recipes import (
    VoiceRecipe,
    agent_voices,
    build_library,
    load_library,
    save_library,
)

__all__ = ["VoiceRecipe", "agent_voices", "build_library", "load_library", "save_library"]
