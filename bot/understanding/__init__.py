"""The understanding layer: what a customer's free text says, in any of the bot's languages. Pure.

`understand(text, lexicon, policy)` reads one message into a `Reading` (serials and what to do with them,
the fault, proof, cause, preference, yes/no, the global intents); the lexicons are data files in
`lexicon/`, one per language. The conversation (`bot/conversation.py`) decides what a reading answers.
"""

from bot.understanding.lexicon import Lexicon, LexiconError, default_lexicon, load_lexicon
from bot.understanding.normalize import clean, fold
from bot.understanding.reader import Reading, understand

__all__ = [
    "Lexicon",
    "LexiconError",
    "Reading",
    "clean",
    "default_lexicon",
    "fold",
    "load_lexicon",
    "understand",
]
