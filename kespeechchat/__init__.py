"""kespeechchat: synthetic Chinese/English speech-dialogue datasets at scale."""

__version__ = "0.1.0"
