"""Every customer language: complete templates, labels and reason texts, and language detection and hints."""

from __future__ import annotations

import re
import string

import pytest

from bot.conversation import LANGUAGES, Reply, base_language
from bot.language import detect, detector, hint_language, hint_variant
from bot.render import TEMPLATES
from bot.understanding import default_lexicon, understand
from policy import REASON_PARAMS
from tests.template_cases import (
    COVERED,
    ENGLISH,
    EXPIRED,
    POLICY,
    RENDERER,
    TRANSLATED,
    contexts,
    decision_group,
    macros,
    variables,
)


def test_english_has_templates() -> None:
    assert len(ENGLISH) > 30
    assert "greeting" in ENGLISH


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_language_has_exactly_the_english_templates(language: str) -> None:
    english = sorted(path.name for path in (TEMPLATES / "en").glob("*.j2"))
    assert sorted(path.name for path in (TEMPLATES / language).glob("*.j2")) == english


@pytest.mark.parametrize("language", TRANSLATED)
@pytest.mark.parametrize("template", ENGLISH)
def test_same_variables_as_english(language: str, template: str) -> None:
    assert variables(language, template) == variables("en", template)


@pytest.mark.parametrize("template", ENGLISH)
def test_every_template_renders_in_every_language(template: str) -> None:
    for context in contexts(template):
        english = RENDERER.text(template, language="en", **context)
        for language in TRANSLATED:
            # StrictUndefined: a variable the translation needs and English does not fails here.
            text = RENDERER.text(template, language=language, **context)
            assert text.strip(), (language, template)
            assert text != english, f"templates/{language}/{template}.j2 renders the English text"
            assert "<function" not in text and "{{" not in text and "{%" not in text, text
            if context.get("case_ref"):
                assert context["case_ref"] in text, (language, template)


def test_a_reply_parameter_may_share_its_name_with_a_renderer_function() -> None:
    # The conversation answers a claim for lost profits with Reply(template="consequential_damages",
    # params={"clause": "L1"}); `clause` is also a function the renderer provides to every template.
    reply = Reply(template="consequential_damages", params={"clause": "L1"})
    for language in LANGUAGES:
        assert "L1" in RENDERER.render(reply, language=language).text


def test_decision_shows_dates_reasons_and_clauses_in_the_language() -> None:
    context = {
        "units": 2,
        "groups": [decision_group(COVERED, "CSP2402A0153"), decision_group(EXPIRED, "CSP2001A0001")],
    }
    expected = {
        "en": ("9 June 2026", "In warranty until", "warranty of 2 years and 2 months (W1)"),
        "zh": ("2026年6月9日", "保修期至", "保修期2年2个月（W1）"),
        "es": ("9 de junio de 2026", "En garantía hasta", "garantía de 2 años y 2 meses (W1)"),
        "ru": ("9 июня 2026", "Гарантия действует", "гарантия 2 года и 2 месяца (W1)"),
        "pt": ("9 de junho de 2026", "Dentro da garantia", "garantia de 2 anos e 2 meses (W1)"),
        "fr": ("9 juin 2026", "Sous garantie", "garantie de 2 ans et 2 mois (W1)"),
        "ar": ("9 يونيو 2026", "مشمول بالضمان", "ضمان لمدة سنتين وشهرين (W1)"),
    }
    for language, (end_date, reason, clause) in expected.items():
        text = RENDERER.text("decision", language=language, **context)
        plain = re.sub("[\u2068\u2069]", "", text).replace("\u00a0", " ").replace("\u202f", " ")
        assert end_date in plain and reason in plain and clause in plain, text
        assert "CSP2001A0001" in text


def test_language_set_names_the_language_in_itself() -> None:
    own_name = {
        "en": "English",
        "zh": "中文",
        "es": "español",
        "ru": "по-русски",
        "pt": "português",
        "fr": "français",
        "ar": "العربية",
    }
    assert set(own_name) == set(LANGUAGES)
    for language, name in own_name.items():
        assert name in RENDERER.text("language_set", language=language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_help_names_command_words_the_bot_understands(language: str) -> None:
    text = RENDERER.text("help", language=language, case_ref=None)
    words = [re.split("[:：]", line[2:])[0].strip() for line in text.splitlines() if line.startswith("- ")]
    intents = [understand(word, default_lexicon(), POLICY).intent for word in words]
    assert intents == ["status", "human", "restart", "language"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_proof_reask_quotes_the_button_label(language: str) -> None:
    label = RENDERER.label("proof_none", language=language)
    assert label in RENDERER.text("proof_reask", language=language, offer_human=False)


# --- labels ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_label_macro_exists_with_the_same_arguments(language: str) -> None:
    english = macros("en")
    translated = macros(language)
    assert sorted(translated) == sorted(english)
    for name, macro in english.items():
        assert translated[name].arguments == macro.arguments, name


LABEL_ARGUMENTS = {"when": "2026-12-09T09:00"}  # a visit slot (bot/fulfilment.py)


@pytest.mark.parametrize("language", TRANSLATED)
def test_labels_are_translated(language: str) -> None:
    # Language names and the rating stay the same everywhere: each language is offered in its own name.
    same = {name for name in macros("en") if name.startswith("language_") or name == "rate"}
    for name, macro in macros("en").items():
        arguments = {argument: LABEL_ARGUMENTS.get(argument, 4) for argument in macro.arguments}
        label = RENDERER.label(name, language=language, **arguments)
        assert label
        assert (label == RENDERER.label(name, language="en", **arguments)) == (name in same), name


# --- reason texts ---------------------------------------------------------------------------------------


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


@pytest.mark.parametrize("language", LANGUAGES)
def test_reason_table_is_complete_with_the_english_placeholders(language: str) -> None:
    texts = POLICY.reason_texts[language]
    english = POLICY.reason_texts["en"]
    assert sorted(texts) == sorted(REASON_PARAMS)
    for code, text in texts.items():
        assert placeholders(text) == placeholders(english[code]), (language, code)
        if language != "en":
            assert text != english[code], (language, code)


# --- detection ------------------------------------------------------------------------------------------

LINES = {
    "en": [
        "My inverter shows E07 and shuts down",
        "The display is blank since yesterday",
        "It stopped working after two weeks",
        "Please send me the shipping address",
        "When will the engineer call me?",
        "The fan makes a loud noise when it starts",
        "I have 40 units from the same order with this problem",
        "Nothing happens when I press the power button",
        "The battery does not charge anymore",
        "Can I get a replacement instead of repair?",
        "The red light keeps blinking",
        "I already sent the invoice last week",
    ],
    "es": [
        "Mi inversor muestra E07 y se apaga",
        "La pantalla no enciende desde ayer",
        "Dejó de funcionar después de dos semanas",
        "Por favor envíenme la dirección de envío",
        "¿Cuándo me va a llamar el técnico?",
        "El ventilador hace mucho ruido al arrancar",
        "Tengo 40 equipos del mismo pedido con este problema",
        "No pasa nada cuando presiono el botón de encendido",
        "La batería ya no carga",
        "¿Me pueden cambiar el equipo en vez de repararlo?",
        "La luz roja parpadea todo el tiempo",
        "Ya les mandé la factura la semana pasada",
        "CSP2402A0153 el equipo se apaga solo cuando arranca la bomba",
    ],
    "pt": [
        "Meu inversor dá erro E07 e desliga sozinho",
        "A tela não liga desde ontem",
        "Parou de funcionar depois de duas semanas",
        "Por favor me mandem o endereço para envio",
        "Quando o técnico vai me ligar?",
        "O ventilador faz muito barulho quando liga",
        "Tenho 40 unidades do mesmo pedido com esse problema",
        "Não acontece nada quando aperto o botão de ligar",
        "A bateria não carrega mais",
        "Vocês podem trocar o aparelho em vez de consertar?",
        "A luz vermelha fica piscando o tempo todo",
        "Já mandei a nota fiscal semana passada",
    ],
    "fr": [
        "Mon onduleur affiche E07 et s'éteint",
        "L'écran ne s'allume plus depuis hier",
        "Il a cessé de fonctionner au bout de deux semaines",
        "Merci de m'envoyer l'adresse d'expédition",
        "Quand est-ce que le technicien va m'appeler ?",
        "Le ventilateur fait beaucoup de bruit au démarrage",
        "J'ai 40 appareils de la même commande avec ce problème",
        "Rien ne se passe quand j'appuie sur le bouton",
        "La batterie ne se recharge plus du tout",
        "Pouvez-vous remplacer l'appareil au lieu de le réparer ?",
        "Le voyant rouge clignote sans arrêt",
        "Je vous ai déjà envoyé la facture la semaine dernière",
    ],
    "ru": [
        "Инвертор показывает E07 и выключается",
        "Экран не включается со вчерашнего дня",
        "Перестал работать через две недели",
        "Пришлите, пожалуйста, адрес для отправки",
        "Когда мне позвонит инженер?",
        "Вентилятор сильно шумит при запуске",
        "У меня 40 штук из одного заказа с этой проблемой",
        "При нажатии на кнопку питания ничего не происходит",
        "Аккумулятор больше не заряжается",
        "Можно заменить устройство вместо ремонта?",
        "Красный индикатор постоянно мигает",
        "Я уже отправил счёт на прошлой неделе",
        "спасибо",
    ],
    "zh": [
        "我的逆变器显示E07然后关机",
        "屏幕从昨天开始就不亮了",
        "用了两个星期就坏了",
        "请把寄件地址发给我",
        "工程师什么时候给我打电话？",
        "风扇启动的时候声音很大",
        "同一个订单有40台都是这个问题",
        "按电源键没有任何反应",
        "电池充不进电了",
        "能不能直接换新的，不修了？",
        "红灯一直在闪",
        "发票上周已经发给你们了",
        "谢谢",
    ],
    "ar": [
        "العاكس يعرض الخطأ E07 ثم ينطفئ",
        "الشاشة لا تعمل منذ أمس",
        "توقف عن العمل بعد أسبوعين",
        "أرسلوا لي عنوان الشحن من فضلكم",
        "متى سيتصل بي المهندس؟",
        "المروحة تصدر صوتا عاليا عند التشغيل",
        "لدي 40 جهازا من نفس الطلب بهذه المشكلة",
        "لا يحدث شيء عندما أضغط زر التشغيل",
        "البطارية لم تعد تشحن",
        "هل يمكن استبدال الجهاز بدلا من إصلاحه؟",
        "الضوء الأحمر يومض باستمرار",
        "أرسلت الفاتورة الأسبوع الماضي",
    ],
}

# Lines a customer of either language could have written: undecided is fine, the wrong language is not.
CLOSE_CALLS = {
    "pt": ["Meu inversor mostra E07 e desliga", "não funciona", "Ver anexo"],
    "es": ["no funciona", "Hola buenas tardes", "Ver adjunto", "por favor"],
    "fr": ["La batterie ne charge plus", "ne marche pas", "Je ne sais pas"],
    "en": [
        "Inverter error",
        "fan error",
        "error code E07",
        "Alarm E07 inverter",
        "Grid fault",
        "pump problem",
    ],
}

# Nothing here may switch a customer's language.
UNDECIDED = [
    "",
    "   ",
    "hello",
    "Hello!",
    "hi",
    "ok",
    "OK",
    "ok ok",
    "yes",
    "no",
    "si",
    "thanks",
    "thank you",
    "merci",
    "gracias",
    "hola",
    "Bonjour",
    "obrigado",
    "help",
    "status",
    "/start",
    "?",
    "👍",
    "5/5",
    "1",
    "12345",
    "E07",
    "Error 07",
    "No sé",
    "CSP2402A0153",
    "csp2402a0153",
    "CSP2402A0153 CSP2402A0154",
    "CSP2402A0153, CSP2402A0154, CSP2402A0155",
    "CSP2402A0100-CSP2402A0149",
    "CSP2402A0100 - CSP2402A0149",
    "cause:normal",
    "cause:damage",
    "lang:es",
    "pref:repair",
    "proof:none",
    "cmd:human",
    "rate:5",
    "+34 612 345 678",
    "2024-05-01",
    "05/01/2024",
    "https://example.com/photo.jpg",
    "info@example.com",
    "こんにちは",
    "안녕하세요",
    "Γεια σας",
    "नमस्ते",
    "ok thanks",
    "ok gracias",
]


# Languages we do not write: Lingua knows only our seven, so their own letters must keep them undecided.
FOREIGN = [
    "Mój falownik pokazuje E07 i się wyłącza",
    "Biến tần của tôi báo lỗi E07 rồi tắt",
    "İnverterim E07 gösteriyor ve kapanıyor",
    "Mein Wechselrichter zeigt E07 und schaltet sich ab, hören Sie",
    "Můj střídač ukazuje chybu E07 a vypne se",
    "Інвертор показує E07 і вимикається",
    "اینورتر من خطای E07 نشان می‌دهد و خاموش می‌شود",
    "インバーターにE07が表示されて止まります",
    "인버터에 E07이 표시되고 꺼집니다",
]


@pytest.mark.parametrize("language", LANGUAGES)
def test_short_real_lines_are_detected(language: str) -> None:
    lines = LINES[language]
    assert len(lines) >= 10
    assert {line: detect(line) for line in lines} == {line: language for line in lines}


@pytest.mark.parametrize("language", sorted(CLOSE_CALLS))
def test_close_calls_are_never_the_wrong_language(language: str) -> None:
    for line in CLOSE_CALLS[language]:
        assert detect(line) in (language, None), line


@pytest.mark.parametrize("text", UNDECIDED)
def test_serials_digits_buttons_and_greetings_do_not_decide(text: str) -> None:
    assert detect(text) is None


@pytest.mark.parametrize("text", FOREIGN)
def test_languages_we_do_not_write_are_not_taken_for_ours(text: str) -> None:
    assert detect(text) is None


def test_serials_and_codes_around_words_do_not_change_the_answer() -> None:
    assert detect("CSP2402A0153 CSP2402A0154: la pantalla muestra E07 y se apaga") == "es"
    assert detect("CSP2402A0153 显示E07，一直报警") == "zh"
    assert detect("cause:normal Инвертор выключается") == "ru"
    assert (
        detect("我的逆变器显示Ｅ０７然后关机") == "zh"
    )  # full-width letters and digits from a Chinese keyboard
    assert detect("请发邮件到info@example.com谢谢") == "zh"
    assert detect("Mon onduleur : voir https://example.com/x.jpg, il ne démarre plus") == "fr"


def test_rendered_replies_are_detected_as_their_language() -> None:
    # The bot's own replies are real text in each language: detection must recognise them too.
    for language in LANGUAGES:
        for template in ("ask_fault", "ask_serial", "case_opened", "refusal_case_opened", "human_requested"):
            text = RENDERER.text(template, language=language, **contexts(template)[0])
            assert detect(text) == language, (language, template)


def test_the_detector_is_built_once() -> None:
    assert detector() is detector()


# --- hints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "language"),
    [
        # Telegram language_code
        ("es", "es"),
        ("pt-br", "pt"),
        ("zh-hans", "zh"),
        ("ru", "ru"),
        ("ar", "ar"),
        ("en", "en"),
        ("fr", "fr"),
        # Teams locale, WeChat language
        ("fr-FR", "fr"),
        ("es-419", "es"),
        ("ar-SA", "ar"),
        ("en-US", "en"),
        ("zh_CN", "zh"),
        ("zh_TW", "zh"),
        ("pt_BR", "pt"),
        # WhatsApp: E.164 with a plus, the wa_id without it, with a prefix or formatting
        ("+34612345678", "es"),
        ("+8613800138000", "zh"),
        ("+79161234567", "ru"),
        ("+5511987654321", "pt"),
        ("+33612345678", "fr"),
        ("+966501234567", "ar"),
        ("+971501234567", "ar"),
        ("+201001234567", "ar"),
        ("447700900142", "en"),
        ("wa:+34612345678", "es"),
        ("+52 1 55 1234 5678", "es"),
        ("0034612345678", "es"),
        ("+18095551234", "es"),
        ("+12025550123", "en"),
        ("+77011234567", "ru"),
        ("+351912345678", "pt"),
        ("+212612345678", "ar"),
        ("+225 07 12 34 56 78", "fr"),
    ],
)
def test_hints_name_a_language(hint: str, language: str) -> None:
    assert hint_language(hint) == language


@pytest.mark.parametrize(
    "hint",
    [
        None,
        "",
        " ",
        "de",
        "de-DE",
        "ja_JP",
        "ko",
        "+4915123456789",
        "+81312345678",
        "+380501234567",
        "12",
        "not a locale",
        "x",
        "+",
        "tel:",
    ],
)
def test_hints_outside_our_languages_say_nothing(hint: str | None) -> None:
    assert hint_language(hint) is None


@pytest.mark.parametrize(("hint", "variant"), [
    ("pt-PT", "pt_PT"), ("pt_pt", "pt_PT"), ("pt-AO", "pt_PT"), ("+351912345678", "pt_PT"), ("244923456789", "pt_PT"),
    ("wa:+258841234567", "pt_PT"), ("pt-BR", None), ("pt", None), ("+5511987654321", None), ("es-ES", None),
    ("+34612345678", None), ("fr-FR", None), (None, None), ("", None), ("de-PT", None), ("+4915123456789", None),
])  # fmt: skip
def test_hints_name_a_written_variant(hint: str | None, variant: str | None) -> None:
    assert hint_variant(hint) == variant
    if variant is not None:
        assert base_language(variant) == hint_language(hint) == "pt"
        assert "você" not in RENDERER.text("human_requested", language=variant, case_ref="WR-2026-000042")
