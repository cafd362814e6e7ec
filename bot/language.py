"""Which of the bot's languages a customer uses: from a channel's locale hint, or from what they write.

Both functions answer None when unsure: a serial number, a button value or a "hello" must never switch a
customer's language. Detection uses Lingua (lingua-language-detector), offline, restricted to `LANGUAGES`.
Chinese, Russian and Arabic are told apart by their scripts alone; the models for the four Latin-script
languages load once per process, on the first Latin-script text, or at start by `preload()` (the worker
calls it): about 1.6 s and 130 MB (docs/languages.md).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

from bot.conversation import LANGUAGES

# Lingua's probability for the best of our seven languages, below which we do not trust it. On short
# support lines a wrong best guess ("Inverter error" -> es, "Ver adjunto" -> pt) stayed at or below 0.5,
# while real Spanish, French or English lines scored 0.57 and up; Spanish and Portuguese lines sharing
# most of their words ("no funciona") fall in between and are left undecided.
MIN_CONFIDENCE = 0.55
# Latin-script languages need some words before their letter statistics mean anything: "hello", "ok",
# "merci" and "gracias" are said in every language.
MIN_LATIN_WORDS = 2
MIN_LATIN_LETTERS = 10
# Han, Cyrillic and Arabic script each belong to one of our languages, so a couple of letters suffice.
MIN_OTHER_LETTERS = 2

# Not language: button values (cause:normal, lang:es), links, addresses, mentions, commands, and every
# token with a digit in it (serial numbers, error codes such as E07, dates, phone numbers, amounts).
# ASCII classes on purpose: Chinese is written without spaces, so `\S+` or `\w+` would eat the words around.
_NOISE = re.compile(
    r"\b[A-Za-z_]+:[A-Za-z0-9_.-]+"
    r"|(?:https?://|www\.)[!-~]+"
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+"
    r"|(?<![A-Za-z0-9_])[@/#][A-Za-z0-9_]+"
    r"|[A-Za-z0-9_./:+-]*[0-9][A-Za-z0-9_./:+-]*"
)
_WORD = re.compile(r"[^\W\d_]+")
# Letters that none of our languages writes: a text with one of them is in another language (Polish,
# Vietnamese, Turkish, German, Czech, Romanian, Nordic; Ukrainian, Belarusian, Serbian, Kazakh; Persian,
# Urdu), which Lingua, knowing only our seven, would otherwise give to the nearest of them.
_FOREIGN_LETTERS = frozenset(
    "łąęśźżńćőűřěůșțşţăđơưßäöåøığ"
    "ạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ"
    "ієїґўђјљњћџѓќѕқғүұһәөңҳҷӣӯ"
    "یکۀےٹڈڑںژ"
)


@functools.cache
def detector() -> LanguageDetector:
    """The one detector, built on first use; its models load lazily, the first time a script needs them."""
    languages = [Language.from_iso_code_639_1(IsoCode639_1.from_str(code)) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*languages).build()


# One line in each language, so that `preload` makes Lingua load every model a customer's text can need.
_SAMPLES = (
    "The display shows an error and it shuts down",
    "La pantalla muestra un error y se apaga",
    "O ecrã mostra um erro e desliga-se",
    "L'écran affiche une erreur et s'éteint",
    "Дисплей показывает ошибку и выключается",
    "الشاشة تعرض خطأ وتنطفئ",
    "显示屏显示错误然后关机",
)


def preload() -> None:
    """Build the detector and load its language models now (about 1.5 s and 130 MB once per process), so
    that the first customer message after a start is as fast as the next ones."""
    for sample in _SAMPLES:
        detect(sample)


def detect(text: str) -> str | None:
    """The language of a customer's message, one of `LANGUAGES`, or None when the text is too short,
    carries no words (serials, digits, button values) or is ambiguous."""
    # NFKC: full-width letters and digits (Ｅ０７), common in Chinese input, become plain ones.
    words = _WORD.findall(_NOISE.sub(" ", unicodedata.normalize("NFKC", text)))
    if not words:
        return None
    letters_only = "".join(words)
    scripts = _scripts(letters_only)
    if scripts.get("other", 0) or scripts.get("kana_hangul", 0):
        return None  # Japanese, Korean, Greek, Hindi…: none of ours, and kanji must not pass for Chinese
    if not _FOREIGN_LETTERS.isdisjoint(letters_only.lower()):
        return None
    letters = sum(scripts.values())
    if scripts.get("latin", 0) * 2 > letters:
        if len(words) < MIN_LATIN_WORDS or letters < MIN_LATIN_LETTERS:
            return None
    elif letters < MIN_OTHER_LETTERS:
        return None
    values = detector().compute_language_confidence_values(" ".join(words))
    if not values or values[0].value < MIN_CONFIDENCE:
        return None
    code = values[0].language.iso_code_639_1.name.lower()
    return code if code in LANGUAGES else None


def _scripts(letters: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for char in letters:
        name = unicodedata.name(char, "")
        if name.startswith("LATIN"):
            script = "latin"
        elif name.startswith("CJK") or "IDEOGRAPH" in name:
            script = "han"
        elif name.startswith(("HIRAGANA", "KATAKANA", "HANGUL")):
            script = "kana_hangul"
        elif name.startswith("CYRILLIC"):
            script = "cyrillic"
        elif name.startswith("ARABIC"):
            script = "arabic"
        else:
            script = "other"
        counts[script] = counts.get(script, 0) + 1
    return counts


# --- locale hints ---------------------------------------------------------------------------------------

# Country calling code (E.164, without +) -> the language most customers there write in. Only countries
# where one of our languages is the usual language of business; elsewhere the hint says nothing (None).
# The codes are prefix-free, except the North American numbers of Spanish-speaking places (+1 809 …),
# which the longest-prefix lookup tries first.
COUNTRY_LANGUAGES: dict[str, str] = {
    # Chinese
    "86": "zh",
    "852": "zh",
    "853": "zh",
    "886": "zh",
    # Spanish: Spain, Latin America, Equatorial Guinea, Dominican Republic, Puerto Rico
    "34": "es",
    "52": "es",
    "53": "es",
    "54": "es",
    "56": "es",
    "57": "es",
    "58": "es",
    "51": "es",
    "502": "es",
    "503": "es",
    "504": "es",
    "505": "es",
    "506": "es",
    "507": "es",
    "591": "es",
    "593": "es",
    "595": "es",
    "598": "es",
    "240": "es",
    "1809": "es",
    "1829": "es",
    "1849": "es",
    "1787": "es",
    "1939": "es",
    # Russian: Russia and Kazakhstan (+7), Belarus, Kyrgyzstan
    "7": "ru",
    "375": "ru",
    "996": "ru",
    # Portuguese: Brazil, Portugal, Angola, Mozambique, Cape Verde, Guinea-Bissau, São Tomé
    "55": "pt",
    "351": "pt",
    "244": "pt",
    "258": "pt",
    "238": "pt",
    "245": "pt",
    "239": "pt",
    # French: France and overseas, Monaco, francophone Africa, Haiti
    "33": "fr",
    "377": "fr",
    "262": "fr",
    "590": "fr",
    "594": "fr",
    "596": "fr",
    "687": "fr",
    "689": "fr",
    "221": "fr",
    "223": "fr",
    "224": "fr",
    "225": "fr",
    "226": "fr",
    "227": "fr",
    "228": "fr",
    "229": "fr",
    "235": "fr",
    "236": "fr",
    "237": "fr",
    "241": "fr",
    "242": "fr",
    "243": "fr",
    "257": "fr",
    "261": "fr",
    "509": "fr",
    # Arabic: the Gulf, the Levant, Egypt, North Africa
    "966": "ar",
    "971": "ar",
    "965": "ar",
    "974": "ar",
    "973": "ar",
    "968": "ar",
    "967": "ar",
    "964": "ar",
    "963": "ar",
    "962": "ar",
    "961": "ar",
    "970": "ar",
    "20": "ar",
    "218": "ar",
    "216": "ar",
    "213": "ar",
    "212": "ar",
    "249": "ar",
    "222": "ar",
    # English
    "1": "en",
    "44": "en",
    "61": "en",
    "64": "en",
    "353": "en",
    "27": "en",
    "234": "en",
    "254": "en",
    "233": "en",
    "63": "en",
    "65": "en",
}
_LONGEST_CODE = max(len(code) for code in COUNTRY_LANGUAGES)
_PHONE = re.compile(r"^(?:\+|00)?(\d{7,15})$")
_TAG = re.compile(r"^([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")


def hint_language(locale_hint: str | None) -> str | None:
    """The language a channel's hint suggests, one of `LANGUAGES`, or None.

    Accepts a language tag (Telegram `language_code` "es" or "pt-br", Teams `locale` "fr-FR", WeChat
    `language` "zh_CN") or a phone number in E.164 (WhatsApp: "+34612345678", or the `wa_id`
    "34612345678" without the plus; a "wa:" or "tel:" prefix is ignored).
    """
    if not locale_hint:
        return None
    hint = locale_hint.strip()
    for prefix in ("wa:", "tel:", "whatsapp:"):
        if hint.lower().startswith(prefix):
            hint = hint[len(prefix) :]
    phone = _PHONE.match(re.sub(r"[\s().-]", "", hint))
    if phone:
        digits = phone.group(1)
        for length in range(_LONGEST_CODE, 0, -1):
            language = COUNTRY_LANGUAGES.get(digits[:length])
            if language is not None:
                return language
        return None
    tag = _TAG.match(hint)
    if tag is None:
        return None
    language = tag.group(1).lower()
    return language if language in LANGUAGES else None


# --- variants -------------------------------------------------------------------------------------------

# Written variants a language has templates for (templates/pt_PT/): the renderer falls back from a variant to
# its language, then to English. European Portuguese is written in Portugal and in Lusophone Africa.
VARIANT_COUNTRY_CODES: dict[str, str] = {
    "351": "pt_PT", "244": "pt_PT", "258": "pt_PT", "238": "pt_PT", "245": "pt_PT", "239": "pt_PT",
}  # fmt: skip
VARIANT_REGIONS: dict[str, dict[str, str]] = {"pt": {"PT": "pt_PT", "AO": "pt_PT", "MZ": "pt_PT", "CV": "pt_PT",
                                                    "GW": "pt_PT", "ST": "pt_PT", "TL": "pt_PT"}}  # fmt: skip


def hint_variant(locale_hint: str | None) -> str | None:
    """The written variant a channel's hint asks for, or None for the language's default (or no hint).

    "pt-PT", "pt_AO" or a Portuguese or Angolan phone number (+351…, +244…) -> "pt_PT"; "pt-BR", "pt",
    "+55…" and every other language -> None. The variant is a `Renderer` language ("pt_PT"); its base
    language ("pt", `bot.conversation.base_language`) is what detection and the language menu deal in.
    """
    language = hint_language(locale_hint)
    if language is None or locale_hint is None:
        return None
    hint = locale_hint.strip()
    for prefix in ("wa:", "tel:", "whatsapp:"):
        if hint.lower().startswith(prefix):
            hint = hint[len(prefix) :]
    phone = _PHONE.match(re.sub(r"[\s().-]", "", hint))
    if phone:
        digits = phone.group(1)
        for length in range(_LONGEST_CODE, 0, -1):
            if digits[:length] in COUNTRY_LANGUAGES:
                return VARIANT_COUNTRY_CODES.get(digits[:length])
        return None
    parts = re.split(r"[-_]", hint)
    region = parts[1].upper() if len(parts) > 1 else ""
    return VARIANT_REGIONS.get(language, {}).get(region)
