"""The virtual speaker library: measured identities × prosodic variants, audit, privacy, assignment."""

from kespeechchat.voice import VoiceRecipe
from voice_library.pool import IdentityPool, load_pool
from voice_library.recipes import (
    agent_voices,
    build_library,
    distinctness_statement,
    library_meta,
    load_library,
    save_library,
)

__all__ = [
    "IdentityPool",
    "VoiceRecipe",
    "agent_voices",
    "build_library",
    "distinctness_statement",
    "library_meta",
    "load_library",
    "load_pool",
    "save_library",
]
