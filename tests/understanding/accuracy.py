"""The corpus's accuracy table per language and slot, as Markdown: `python -m tests.understanding.accuracy`.

docs/understanding.md shows its output; regenerate it there after changing a lexicon or the corpus.
"""

from __future__ import annotations

from collections import defaultdict

from bot.understanding import default_lexicon, understand
from policy import default_policy
from tests.understanding.corpus import differences, load

LANGUAGES = ("en", "zh", "es", "ru", "pt", "fr", "ar")


def table() -> str:
    policy, lexicon = default_policy(), default_lexicon()
    right: dict[tuple[str, str], int] = defaultdict(int)
    total: dict[tuple[str, str], int] = defaultdict(int)
    for case in load():
        group = case.slot.split(":")[0]
        ok = not differences(case, understand(case.text, lexicon, policy))
        for key in ((case.language, group), (case.language, "all")):
            total[key] += 1
            right[key] += ok
    groups = [*sorted({g for _, g in total} - {"all"}), "all"]
    lines = ["| slot | " + " | ".join(LANGUAGES) + " |", "|---|" + "---|" * len(LANGUAGES)]
    for group in groups:
        cells = []
        for lang in LANGUAGES:
            n = total.get((lang, group), 0)
            cells.append(f"{right[(lang, group)]}/{n}" if n else "–")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
