// The customer's web chat: one session per browser (localStorage), the log polled every second.
// Everything people wrote is inserted with textContent: customer and engineer text is data, never markup.
"use strict";

(function () {
  const API = "/api/webchat/sessions";
  const SESSION_KEY = "warranty.webchat.session";
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 5000;
  // Right after the customer sends, the bot's answer is usually a moment away: look a few times sooner.
  const QUICK_POLL_MS = 250;
  const QUICK_POLLS = 4;
  const SEND_ATTEMPTS = 3; // quick tries before the bubble says "Not sent" (it stays queued)
  const RETRY_MS = 3000; // while the server is out of reach, a queued message is tried again this often
  const TYPING_MS = 20000; // the typing dots give up if no answer comes
  // The server reports an engineer typing for 6 s after the desk's last signal; polls that stop coming
  // (connection lost) must not leave the dots up much longer.
  const ENGINEER_TYPING_MS = 7000;
  const MAX_RETRY_AFTER_S = 60; // a 429's Retry-After is honoured up to this long, then tried again
  const RATE_LIMIT_WAITS = 5; // 429s in a row one message waits through before "Not sent" (it stays queued)
  const COLLAPSE_CHARS = 1200; // longer messages show their start and "Show more"
  const COLLAPSE_LINES = 20;
  const VIEWABLE = /^(image\/(jpeg|png|gif|webp)|application\/pdf)$/;
  const SHRINK_ABOVE_BYTES = 1.5 * 1024 * 1024;
  const SHRINK_TO_PIXELS = 2560;

  const STRINGS = {
    en: {
      language: "Language", choices: "Choose an answer", more: "Show more", less: "Show less",
      typing: "The assistant is writing…",
      engineerTyping: "{name} is typing…", someoneTyping: "An engineer is typing…", queued: "Waiting for the connection…",
      title: "Warranty support", subtitle: "After-sales service", new: "New conversation",
      intro: "Hello! Send the serial number of your unit (on the label on the back or bottom) and describe " +
        "the fault. You can attach photos or PDF documents.",
      log: "Conversation", attach: "Attach a photo or PDF", message: "Your message",
      placeholder: "Type your message…", hint: "Enter sends; Shift+Enter starts a new line.", send: "Send",
      you: "You", bot: "Warranty assistant", engineer: "Engineer", file: "File sent", sending: "Sending…",
      uploading: "Uploading…", failed: "Not sent.", retry: "Retry", tooLarge: "This file is too large.",
      badType: "Only photos and PDF files can be sent.", offline: "Connection lost. Retrying…",
      lost: "This conversation has expired. Write again to start a new one.",
    },
    zh: {
      language: "语言", choices: "请选择一个答案", more: "展开全文", less: "收起", typing: "助手正在输入…",
      engineerTyping: "{name} 正在输入…", someoneTyping: "工程师正在输入…", queued: "正在等待连接…",
      title: "保修服务", subtitle: "售后服务", new: "新对话",
      intro: "您好！请发送设备的序列号（在背面或底部的标签上）并描述故障。您可以附上照片或 PDF 文件。",
      log: "对话", attach: "附上照片或 PDF", message: "您的消息", placeholder: "输入消息…",
      hint: "按 Enter 发送；Shift+Enter 换行。", send: "发送", you: "您", bot: "保修助手", engineer: "工程师",
      file: "已发送文件", sending: "正在发送…", uploading: "正在上传…", failed: "未发送。", retry: "重试",
      tooLarge: "文件太大。", badType: "只能发送照片和 PDF 文件。", offline: "连接中断，正在重试…",
      lost: "此对话已过期。请重新发送消息开始新的对话。",
    },
    es: {
      language: "Idioma", choices: "Elija una respuesta", more: "Ver más", less: "Ver menos",
      typing: "El asistente está escribiendo…",
      engineerTyping: "{name} está escribiendo…", someoneTyping: "Un técnico está escribiendo…", queued: "Esperando la conexión…",
      title: "Soporte de garantía", subtitle: "Servicio posventa", new: "Nueva conversación",
      intro: "¡Hola! Envíe el número de serie de su equipo (en la etiqueta de la parte trasera o inferior) y " +
        "describa la falla. Puede adjuntar fotos o documentos PDF.",
      log: "Conversación", attach: "Adjuntar una foto o un PDF", message: "Su mensaje",
      placeholder: "Escriba su mensaje…", hint: "Intro envía; Mayús+Intro añade una línea.", send: "Enviar",
      you: "Usted", bot: "Asistente de garantía", engineer: "Ingeniero", file: "Archivo enviado",
      sending: "Enviando…", uploading: "Subiendo…", failed: "No enviado.", retry: "Reintentar",
      tooLarge: "El archivo es demasiado grande.", badType: "Solo se pueden enviar fotos y archivos PDF.",
      offline: "Conexión perdida. Reintentando…",
      lost: "Esta conversación ha caducado. Escriba de nuevo para iniciar una nueva.",
    },
    ru: {
      language: "Язык", choices: "Выберите ответ", more: "Показать полностью", less: "Свернуть",
      typing: "Помощник печатает…",
      engineerTyping: "{name} печатает…", someoneTyping: "Инженер печатает…", queued: "Ждём соединения…",
      title: "Гарантийная поддержка", subtitle: "Сервисное обслуживание", new: "Новый диалог",
      intro: "Здравствуйте! Отправьте серийный номер устройства (на наклейке сзади или снизу) и опишите " +
        "неисправность. Можно приложить фото или PDF-документы.",
      log: "Диалог", attach: "Приложить фото или PDF", message: "Ваше сообщение",
      placeholder: "Введите сообщение…", hint: "Enter — отправить; Shift+Enter — новая строка.",
      send: "Отправить", you: "Вы", bot: "Гарантийный помощник", engineer: "Инженер", file: "Файл отправлен",
      sending: "Отправка…", uploading: "Загрузка…", failed: "Не отправлено.", retry: "Повторить",
      tooLarge: "Файл слишком большой.", badType: "Можно отправлять только фото и PDF-файлы.",
      offline: "Нет соединения. Повторяем…", lost: "Срок этого диалога истёк. Напишите снова, чтобы начать новый.",
    },
    pt: {
      language: "Idioma", choices: "Escolha uma resposta", more: "Mostrar mais", less: "Mostrar menos",
      typing: "O assistente está escrevendo…",
      engineerTyping: "{name} está escrevendo…", someoneTyping: "Um técnico está escrevendo…", queued: "Aguardando a conexão…",
      title: "Suporte de garantia", subtitle: "Assistência pós-venda", new: "Nova conversa",
      intro: "Olá! Envie o número de série do seu equipamento (na etiqueta na parte de trás ou de baixo) e " +
        "descreva o defeito. Você pode anexar fotos ou documentos PDF.",
      log: "Conversa", attach: "Anexar foto ou PDF", message: "Sua mensagem", placeholder: "Digite sua mensagem…",
      hint: "Enter envia; Shift+Enter cria uma nova linha.", send: "Enviar", you: "Você",
      bot: "Assistente de garantia", engineer: "Engenheiro", file: "Arquivo enviado", sending: "Enviando…",
      uploading: "Enviando arquivo…", failed: "Não enviada.", retry: "Tentar de novo",
      tooLarge: "O arquivo é grande demais.", badType: "Só é possível enviar fotos e arquivos PDF.",
      offline: "Conexão perdida. Tentando novamente…",
      lost: "Esta conversa expirou. Escreva de novo para iniciar uma nova.",
    },
    fr: {
      language: "Langue", choices: "Choisissez une réponse", more: "Afficher plus", less: "Afficher moins",
      typing: "L’assistant écrit…",
      engineerTyping: "{name} écrit…", someoneTyping: "Un technicien écrit…", queued: "En attente de la connexion…",
      title: "Assistance garantie", subtitle: "Service après-vente", new: "Nouvelle conversation",
      intro: "Bonjour ! Envoyez le numéro de série de votre appareil (sur l’étiquette au dos ou dessous) et " +
        "décrivez la panne. Vous pouvez joindre des photos ou des documents PDF.",
      log: "Conversation", attach: "Joindre une photo ou un PDF", message: "Votre message",
      placeholder: "Écrivez votre message…", hint: "Entrée envoie ; Maj+Entrée passe à la ligne.",
      send: "Envoyer", you: "Vous", bot: "Assistant garantie", engineer: "Ingénieur", file: "Fichier envoyé",
      sending: "Envoi…", uploading: "Téléversement…", failed: "Non envoyé.", retry: "Réessayer",
      tooLarge: "Le fichier est trop volumineux.", badType: "Seules les photos et les fichiers PDF peuvent être envoyés.",
      offline: "Connexion perdue. Nouvelle tentative…",
      lost: "Cette conversation a expiré. Écrivez de nouveau pour en commencer une autre.",
    },
    ar: {
      language: "اللغة", choices: "اختر إجابة", more: "عرض المزيد", less: "عرض أقل",
      typing: "المساعد يكتب…",
      engineerTyping: "{name} يكتب…", someoneTyping: "أحد المهندسين يكتب…", queued: "بانتظار الاتصال…",
      title: "دعم الضمان", subtitle: "خدمة ما بعد البيع", new: "محادثة جديدة",
      intro: "مرحبًا! أرسل الرقم التسلسلي لجهازك (على الملصق في الخلف أو الأسفل) وصِف العطل. " +
        "يمكنك إرفاق صور أو مستندات PDF.",
      log: "المحادثة", attach: "إرفاق صورة أو ملف PDF", message: "رسالتك", placeholder: "اكتب رسالتك…",
      hint: "Enter للإرسال، وShift+Enter لسطر جديد.", send: "إرسال", you: "أنت", bot: "مساعد الضمان",
      engineer: "مهندس", file: "تم إرسال الملف", sending: "جارٍ الإرسال…", uploading: "جارٍ الرفع…",
      failed: "لم تُرسل.", retry: "إعادة المحاولة", tooLarge: "الملف كبير جدًا.",
      badType: "يمكن إرسال الصور وملفات PDF فقط.", offline: "انقطع الاتصال. جارٍ إعادة المحاولة…",
      lost: "انتهت صلاحية هذه المحادثة. اكتب مرة أخرى لبدء محادثة جديدة.",
    },
  };

  // Each language named in its own words, for the picker.
  const LANGUAGE_NAMES = {
    en: "English", zh: "中文", es: "Español", ru: "Русский", pt: "Português", fr: "Français", ar: "العربية",
  };
  const LANGUAGE_KEY = "warranty.webchat.language";

  // --- language of the page: ?lang=, then the customer's choice in the picker, then the browser's ----------

  function pageLanguage() {
    const asked = new URLSearchParams(location.search).get("lang");
    const wanted = [asked, localStorage.getItem(LANGUAGE_KEY)]
      .concat(Array.from(navigator.languages || [navigator.language]));
    for (const tag of wanted) {
      const base = (tag || "").toLowerCase().split(/[-_]/)[0];
      if (STRINGS[base]) return { code: base, tag: tag };
    }
    return { code: "en", tag: "en" };
  }

  let language = pageLanguage();
  let T = STRINGS[language.code];

  function translatePage() {
    document.documentElement.lang = language.code;
    document.documentElement.dir = language.code === "ar" ? "rtl" : "ltr";
    document.title = T.title;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = T[el.dataset.i18n];
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = T[el.dataset.i18nPlaceholder];
    }
    for (const el of document.querySelectorAll("[data-i18n-label]")) {
      el.setAttribute("aria-label", T[el.dataset.i18nLabel]);
    }
    for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = T[el.dataset.i18nTitle];
    // Words the page wrote into the log itself (author names, group labels, "Show more") follow too.
    for (const el of document.querySelectorAll("[data-t]")) el.textContent = T[el.dataset.t];
    for (const el of document.querySelectorAll("[data-t-label]")) el.setAttribute("aria-label", T[el.dataset.tLabel]);
    for (const el of document.querySelectorAll(".more")) {
      el.textContent = el.getAttribute("aria-expanded") === "true" ? T.less : T.more;
    }
  }

  function setLanguage(code) {
    language = { code, tag: code };
    T = STRINGS[code];
    localStorage.setItem(LANGUAGE_KEY, code);
    translatePage();
    renderTyping(); // an engineer's typing line is not one of the page's fixed words
  }

  // --- small helpers ------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    // Pages served over plain http on a LAN are not a secure context: build a v4 uuid by hand.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  // A paperclip drawn in SVG: emoji fonts are missing on many desktops and kiosks.
  function clipIcon() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "icon");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M21 11.5l-8.6 8.6a5.5 5.5 0 0 1-7.8-7.8l8.6-8.6a3.7 3.7 0 0 1 5.2 5.2l-8.6 8.6a1.8 " +
      "1.8 0 0 1-2.6-2.6l7.9-7.9");
    svg.appendChild(path);
    return svg;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  const timeFormat = new Intl.DateTimeFormat(language.tag || undefined, { hour: "2-digit", minute: "2-digit" });
  const dateTimeFormat = new Intl.DateTimeFormat(language.tag || undefined,
    { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

  function timeElement(iso) {
    const when = iso ? new Date(iso) : new Date();
    const node = el("time");
    if (!isNaN(when)) {
      node.dateTime = when.toISOString();
      const today = new Date().toDateString() === when.toDateString();
      node.textContent = (today ? timeFormat : dateTimeFormat).format(when);
    }
    return node;
  }

  class HttpError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter; // milliseconds from a 429's Retry-After header, or null
    }
  }

  // Retry-After is whole seconds or an HTTP date; anything else (or nothing) means one second.
  function retryAfterMs(header) {
    if (header === null) return null;
    const seconds = /^\s*\d+\s*$/.test(header) ? Number(header) : (Date.parse(header) - Date.now()) / 1000;
    const wait = Number.isFinite(seconds) ? seconds : 1;
    return Math.round(Math.min(Math.max(wait, 1), MAX_RETRY_AFTER_S) * 1000);
  }

  async function request(method, path, body) {
    const options = { method, headers: { Accept: "application/json" }, cache: "no-store" };
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = {};
    try {
      data = await response.json();
    } catch (error) {
      data = {};
    }
    if (!response.ok) {
      const wait = response.status === 429 ? retryAfterMs(response.headers.get("Retry-After") || "1") : null;
      throw new HttpError(response.status, data.error || response.statusText, wait);
    }
    return data;
  }

  // --- state --------------------------------------------------------------------------------------------

  const log = document.getElementById("log");
  const main = document.getElementById("main");
  const notice = document.getElementById("notice");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const fileInput = document.getElementById("file");
  const typing = document.getElementById("typing");
  const picker = document.getElementById("language");

  let sessionId = localStorage.getItem(SESSION_KEY);
  let creating = null;
  let lastId = 0;
  let generation = 0; // bumped by "new conversation": answers for an older session are dropped
  let pollTimer = null;
  let quickPolls = 0;
  let pinned = true; // the view follows the newest message while the customer has not scrolled up
  let typingTimer = null;
  let botTyping = false; // the bot's answer to the customer's message is on its way
  let engineerTyping = null; // {name} while an engineer writes on the desk (name null: "An engineer")
  let engineerTimer = null;
  let retryTimer = null;
  let flushing = false;
  const offered = new Map(); // button value -> label, from the bot's messages, latest wins
  const pending = []; // shown and not yet back from the server: {clientId, kind, value, node}
  const outbox = []; // not yet accepted by the server, in the order the customer sent them

  for (const [code, name] of Object.entries(LANGUAGE_NAMES)) offered.set(`lang:${code}`, name);

  function showNotice(text, isError) {
    notice.textContent = text || "";
    notice.classList.toggle("error", Boolean(isError));
    notice.hidden = !text;
  }

  function nearBottom() {
    return main.scrollHeight - main.scrollTop - main.clientHeight < 80;
  }

  function scrollToBottom() {
    main.scrollTop = main.scrollHeight;
    pinned = true;
  }

  // Content that grows later (a photo's preview decoding, the typing dots, a reply) keeps the view at the
  // bottom as long as the customer was there; scrolling up to read stops that until they come back down.
  // Only a scroll upwards unpins: content growing under the view fires no scroll, and a late scroll event
  // after our own jump to the bottom must not read a just-grown log as "the customer scrolled away".
  let lastTop = 0;
  main.addEventListener("scroll", () => {
    const top = main.scrollTop;
    if (top < lastTop - 2) pinned = nearBottom();
    else if (nearBottom()) pinned = true;
    lastTop = top;
  }, { passive: true });
  if (typeof ResizeObserver === "function") {
    new ResizeObserver(() => { if (pinned) main.scrollTop = main.scrollHeight; }).observe(main.firstElementChild);
  }

  function showTyping(on) {
    clearTimeout(typingTimer);
    botTyping = on;
    // An answer that never comes must not leave the dots forever.
    if (on) typingTimer = setTimeout(() => { botTyping = false; renderTyping(); }, TYPING_MS);
    renderTyping();
  }

  function showEngineerTyping(who) {
    clearTimeout(engineerTimer);
    engineerTyping = who;
    if (who) engineerTimer = setTimeout(() => { engineerTyping = null; renderTyping(); }, ENGINEER_TYPING_MS);
    renderTyping();
  }

  // One line of dots: an engineer writing wins over the bot. The engineer's name is data (textContent),
  // isolated so that a Latin name keeps its place in a right-to-left sentence.
  function renderTyping() {
    const label = typing.querySelector(".label");
    let text = T.typing;
    if (engineerTyping) {
      delete label.dataset.i18n; // its words are not the page's fixed "typing" any more
      text = engineerTyping.name
        ? T.engineerTyping.replace("{name}", () => `\u2068${engineerTyping.name}\u2069`)
        : T.someoneTyping;
    } else {
      label.dataset.i18n = "typing";
    }
    if (label.textContent !== text) label.textContent = text; // unchanged: nothing new to announce
    typing.hidden = !(engineerTyping || botTyping);
  }

  async function ensureSession() {
    // Another tab of this browser may have started the conversation meanwhile: write to the same one.
    if (!sessionId) sessionId = localStorage.getItem(SESSION_KEY);
    if (sessionId) return sessionId;
    if (!creating) {
      const mine = generation;
      const tag = (language.tag || "").slice(0, 16);
      creating = request("POST", API, tag.length >= 2 ? { language: tag } : {}).then((data) => {
        if (mine === generation) {
          sessionId = data.session_id;
          localStorage.setItem(SESSION_KEY, sessionId);
          schedulePoll(0);
        }
        return data.session_id;
      }).finally(() => { creating = null; });
    }
    return creating;
  }

  function forgetSession() {
    generation += 1;
    sessionId = null;
    lastId = 0;
    offered.clear();
    for (const [code, name] of Object.entries(LANGUAGE_NAMES)) offered.set(`lang:${code}`, name);
    pending.length = 0;
    outbox.length = 0;
    log.replaceChildren();
    showTyping(false);
    showEngineerTyping(null);
    clearTimeout(pollTimer);
    clearTimeout(retryTimer);
  }

  // --- rendering ----------------------------------------------------------------------------------------

  function bubble(author, authorName) {
    const item = el("div", `msg msg-${author}`); // a log, not a list: role="log" replaces the list role
    const key = author === "customer" ? "you" : author === "engineer" ? "engineer" : "bot";
    const who = el("span", author === "customer" ? "who visually-hidden" : "who", T[key]);
    if (author === "engineer" && authorName) who.textContent = authorName;
    else who.dataset.t = key;
    item.appendChild(who);
    return item;
  }

  // Latin runs with a digit (serials, case references, ISO dates, model codes) are bidi isolates, so
  // "WR-2026-000123" and "2026-12-01" keep their order inside Arabic text and do not decide the direction
  // of the line they are on. Every piece is a text node: what people wrote is never parsed as markup.
  const LATIN_RUN = /[A-Za-z0-9](?:[A-Za-z0-9._:/+-]*[A-Za-z0-9])?/g;

  function fillText(node, text) {
    let at = 0;
    for (const match of text.matchAll(LATIN_RUN)) {
      if (!/[0-9]/.test(match[0])) continue;
      if (match.index > at) node.appendChild(document.createTextNode(text.slice(at, match.index)));
      node.appendChild(el("bdi", "", match[0]));
      at = match.index + match[0].length;
    }
    if (at < text.length) node.appendChild(document.createTextNode(text.slice(at)));
  }

  // A line's own direction: its first letter outside those isolated runs, or null when it has none (a line
  // that is only a serial, "CSP2402A0153:", or a date). Such a line takes the message's direction: in an
  // Arabic message it sits at the right like the others, where plain first-strong detection found no letter
  // and laid it out left to right.
  const RTL_LETTER = /[\p{Script=Arabic}\p{Script=Hebrew}\p{Script=Syriac}\p{Script=Thaana}\p{Script=Nko}]/u;

  function ownDirection(text) {
    const bare = text.replace(/\u2068[^\u2069]*\u2069/g, " ")
      .replace(LATIN_RUN, (run) => (/[0-9]/.test(run) ? " " : run));
    const letter = bare.match(/\p{L}/u);
    if (!letter) return null;
    return RTL_LETTER.test(letter[0]) ? "rtl" : "ltr";
  }

  let textIds = 0;

  function textBlock(text, file) {
    const node = el("div", file ? "text file" : "text");
    node.dir = "auto";
    const lines = text.split("\n");
    if (file || lines.length === 1) {
      fillText(node, text);
    } else {
      // One block per line, each with its direction; the line breaks stay in the text (copy, textContent).
      const whole = ownDirection(text) || document.documentElement.dir || "ltr";
      node.dir = whole; // dir="auto" would not look inside the lines, which have a dir of their own
      lines.forEach((line, index) => {
        const part = el("span", "line");
        part.dir = ownDirection(line) || whole;
        fillText(part, index < lines.length - 1 ? `${line}\n` : line);
        node.appendChild(part);
      });
    }
    if (file) node.prepend(clipIcon());
    return node;
  }

  // A very long message (a pasted log, a 20,000-character complaint) shows its start and a "Show more".
  function collapsible(item, block, text) {
    if (text.length <= COLLAPSE_CHARS && text.split("\n").length <= COLLAPSE_LINES) return;
    textIds += 1;
    block.id = `text-${textIds}`;
    block.classList.add("collapsed");
    const toggle = el("button", "more secondary", T.more);
    toggle.type = "button";
    toggle.setAttribute("aria-expanded", "false");
    toggle.setAttribute("aria-controls", block.id);
    toggle.addEventListener("click", () => {
      const open = block.classList.toggle("collapsed") === false;
      toggle.setAttribute("aria-expanded", String(open));
      toggle.textContent = open ? T.less : T.more;
    });
    block.after(toggle);
  }

  function choiceGroup(buttons) {
    const group = el("div", "choices");
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", T.choices);
    group.dataset.tLabel = "choices";
    for (const button of buttons) {
      if (!button || typeof button.value !== "string") continue;
      const label = typeof button.label === "string" && button.label ? button.label : button.value;
      offered.set(button.value, label);
      const choice = el("button", "choice", label);
      choice.type = "button";
      choice.dir = "auto";
      choice.dataset.value = button.value;
      choice.addEventListener("click", (event) => {
        for (const b of group.querySelectorAll("button")) b.disabled = true;
        sendText(button.value, label);
        // The chosen button is now disabled, which would drop the focus to the page: keep it in the text
        // box for keyboard users (event.detail is 0 for Enter/Space); touch keeps its keyboard closed.
        if (event.detail === 0 || !matchMedia("(pointer: coarse)").matches) input.focus();
      });
      group.appendChild(choice);
    }
    return group;
  }

  function renderServerMessage(message) {
    const item = bubble(message.author, message.author_name);
    item.dataset.id = String(message.id);
    let text = message.text || "";
    const file = message.author === "customer" && !text; // only a file makes a message without text
    if (message.author === "customer" && offered.has(text)) text = offered.get(text);
    // File names, when the API lists them ({"attachments": [{"name": ...}]}); otherwise a generic line.
    const names = Array.isArray(message.attachments)
      ? message.attachments.map((a) => a && a.name).filter((n) => typeof n === "string" && n) : [];
    const shown = file ? names.join(", ") || T.file : text;
    const block = textBlock(shown, file);
    item.appendChild(block);
    collapsible(item, block, shown);
    // Files an engineer sent (a guidance step's): links to download them; their names are text, never markup.
    const files = message.author !== "customer" && Array.isArray(message.attachments) ? message.attachments : [];
    for (const f of files) {
      if (!f || typeof f.url !== "string" || !f.url.startsWith("/api/webchat/")) continue;
      const link = document.createElement("a");
      link.className = "file-link";
      link.href = f.url;
      link.download = typeof f.name === "string" ? f.name : "";
      link.textContent = "📎 " + (typeof f.name === "string" && f.name ? f.name : T.file);
      item.appendChild(link);
    }
    const buttons = Array.isArray(message.buttons) ? message.buttons : [];
    if (buttons.length) item.appendChild(choiceGroup(buttons));
    item.appendChild(timeElement(message.created_at));
    return item;
  }

  // Only the choices offered after the customer's last message can still be answered.
  function refreshChoices() {
    const items = Array.from(log.children);
    let lastCustomer = -1;
    items.forEach((item, index) => { if (item.classList.contains("msg-customer")) lastCustomer = index; });
    items.forEach((item, index) => {
      for (const b of item.querySelectorAll(".choices button")) b.disabled = index < lastCustomer;
    });
  }

  function firstPendingNode() {
    return pending.length ? pending[0].node : null;
  }

  function matchPending(message) {
    if (message.author !== "customer") return -1;
    if (message.client_id) {
      const byId = pending.findIndex((p) => p.clientId === message.client_id);
      if (byId >= 0) return byId;
    }
    if (!message.text) return pending.findIndex((p) => p.kind === "file");
    return pending.findIndex((p) => p.kind === "text" && p.value === message.text);
  }

  function applyMessages(messages) {
    const follow = pinned || nearBottom();
    let answered = false; // one of ours came back, and nothing from the bot after it (yet)
    for (const message of messages) {
      if (typeof message.id !== "number" || message.id <= lastId) continue;
      lastId = message.id;
      if (message.author !== "customer") showTyping(false);
      if (message.author === "engineer") showEngineerTyping(null);
      answered = false;
      const index = matchPending(message);
      if (index >= 0) {
        // Our own message came back from the server: keep what we showed (label, preview), mark it sent.
        const [mine] = pending.splice(index, 1);
        answered = true;
        mine.node.classList.remove("pending", "failed");
        mine.node.dataset.id = String(message.id);
        const state = mine.node.querySelector(".state");
        if (state) state.remove();
        const anchor = firstPendingNode();
        if (anchor && anchor !== mine.node) log.insertBefore(mine.node, anchor);
        continue;
      }
      log.insertBefore(renderServerMessage(message), firstPendingNode());
    }
    // The server logs a customer's message and the bot's answers to it in one transaction: our message
    // back with nothing after it means the bot had nothing to add (a case's later messages are taken
    // quietly), so the dots stop, unless another message of ours is still being read.
    if (answered && !pending.some((p) => p.accepted)) showTyping(false);
    refreshChoices();
    if (follow && messages.length) scrollToBottom();
  }

  function addPending(kind, value, shown, extra) {
    const item = bubble("customer");
    item.classList.add("pending");
    if (extra) item.appendChild(extra);
    const block = textBlock(shown, kind === "file");
    item.appendChild(block);
    collapsible(item, block, shown);
    const state = el("span", "state", kind === "file" ? T.uploading : T.sending);
    state.setAttribute("aria-hidden", "true");
    item.appendChild(state);
    item.appendChild(timeElement());
    log.appendChild(item);
    const entry = { clientId: uuid(), kind, value, node: item, generation };
    pending.push(entry);
    refreshChoices();
    scrollToBottom();
    return entry;
  }

  function markFailed(entry, reason, canRetry) {
    entry.node.classList.remove("pending");
    entry.node.classList.add("failed");
    const state = entry.node.querySelector(".state") || entry.node.appendChild(el("span", "state"));
    state.removeAttribute("aria-hidden");
    state.replaceChildren(el("span", "", reason ? `${T.failed} ${reason}` : T.failed));
    if (canRetry) {
      const again = el("button", "secondary retry", T.retry);
      again.type = "button";
      again.addEventListener("click", () => {
        entry.node.classList.remove("failed");
        entry.node.classList.add("pending");
        state.textContent = T.sending;
        state.setAttribute("aria-hidden", "true");
        input.focus();
        flush();
      });
      state.appendChild(again);
    }
  }

  function markSent(entry) {
    entry.accepted = true;
    entry.node.classList.remove("failed");
    const state = entry.node.querySelector(".state");
    if (state && entry.node.classList.contains("pending")) state.textContent = "✓";
  }

  // --- sending ------------------------------------------------------------------------------------------

  function queue(entry, post) {
    entry.post = post;
    outbox.push(entry);
    flush();
  }

  // One message at a time, in the order they were written. When the server cannot be reached the message
  // stays first in the queue, says "Not sent", and goes as soon as the connection is back (a poll that
  // answers, the browser's "online" event, Retry, or the next attempt a few seconds later).
  async function flush() {
    if (flushing) return;
    flushing = true;
    clearTimeout(retryTimer);
    try {
      while (outbox.length) {
        const entry = outbox[0];
        if (entry.generation === generation && !(await deliver(entry))) {
          retryTimer = setTimeout(flush, RETRY_MS);
          return;
        }
        if (outbox[0] === entry) outbox.shift();
      }
    } finally {
      flushing = false;
    }
  }

  // True once the message is settled (accepted or refused for good); false while the server is out of
  // reach. Retries reuse the message's client_id, so the server stores it once however often it arrives.
  async function deliver(entry) {
    let limited = 0;
    for (let attempt = 0; attempt < SEND_ATTEMPTS; attempt += 1) {
      if (entry.generation !== generation) return true;
      try {
        const id = await ensureSession();
        await entry.post(id);
        if (entry.generation !== generation) return true;
        markSent(entry);
        if (notice.textContent === T.offline) showNotice("");
        showTyping(true);
        quickPolls = QUICK_POLLS;
        schedulePoll(QUICK_POLL_MS);
        return true;
      } catch (error) {
        if (entry.generation !== generation) return true;
        if (error instanceof HttpError && error.status === 404) {
          // The server no longer knows this session (expired or reset): start a new one and resend.
          sessionId = null;
          localStorage.removeItem(SESSION_KEY);
          lastId = 0;
          continue;
        }
        if (error instanceof HttpError && error.status === 429 && limited < RATE_LIMIT_WAITS) {
          // Too many messages at once: wait as long as the server asks, then send the same message again
          // (same client_id). The bubble keeps saying "Sending…": nothing is wrong with the connection.
          limited += 1;
          attempt -= 1;
          await sleep(error.retryAfter);
          continue;
        }
        if (error instanceof HttpError && error.status === 413) {
          markFailed(entry, T.tooLarge, false);
          return true;
        }
        if (error instanceof HttpError && error.status >= 400 && error.status < 500 && error.status !== 429) {
          markFailed(entry, error.message, false);
          return true;
        }
        if (entry.node.classList.contains("failed")) return false; // already told: one quiet try a round
        if (attempt + 1 < SEND_ATTEMPTS) await sleep(500 * 2 ** attempt);
      }
    }
    markFailed(entry, T.queued, true);
    showNotice(T.offline, true);
    return false;
  }

  function sendText(value, shown) {
    const entry = addPending("text", value, shown === undefined ? value : shown);
    queue(entry, (id) => request("POST", `${API}/${encodeURIComponent(id)}/messages`,
      { text: value, client_id: entry.clientId }));
  }

  // Phone photos are often several megabytes: large ones are re-encoded at a size that still shows a
  // serial label sharply, so they pass the server's request size limit and slow mobile links.
  async function shrinkImage(file) {
    if (file.size <= SHRINK_ABOVE_BYTES || !/^image\/(jpeg|png|webp)$/.test(file.type) ||
        typeof createImageBitmap !== "function") return file;
    try {
      const bitmap = await createImageBitmap(file);
      const scale = Math.min(1, SHRINK_TO_PIXELS / Math.max(bitmap.width, bitmap.height));
      const canvas = document.createElement("canvas");
      canvas.width = Math.round(bitmap.width * scale);
      canvas.height = Math.round(bitmap.height * scale);
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      bitmap.close();
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
      if (!blob || blob.size >= file.size) return file;
      const name = file.name.replace(/\.[^.]*$/, "") + ".jpg";
      return new File([blob], name, { type: "image/jpeg" });
    } catch (error) {
      return file;
    }
  }

  async function sendFile(original) {
    if (!(original.type.startsWith("image/") || original.type === "application/pdf")) {
      showNotice(`${original.name}: ${T.badType}`, true);
      return;
    }
    const file = await shrinkImage(original);
    let preview = null;
    if (VIEWABLE.test(file.type) && file.type.startsWith("image/")) {
      preview = el("img", "preview");
      preview.alt = "";
      preview.src = URL.createObjectURL(file);
    }
    const entry = addPending("file", file.name, file.name, preview);
    queue(entry, (id) => {
      const body = new FormData();
      body.append("file", file, file.name);
      return request("POST", `${API}/${encodeURIComponent(id)}/files`, body);
    });
  }

  // --- polling ------------------------------------------------------------------------------------------

  function schedulePoll(delay) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    if (!sessionId) return;
    const mine = generation;
    const id = sessionId;
    let more = false;
    let wait = null;
    try {
      const data = await request("GET", `${API}/${encodeURIComponent(id)}/messages?after=${lastId}`);
      if (mine !== generation || id !== sessionId) return;
      const messages = Array.isArray(data.messages) ? data.messages : [];
      applyMessages(messages);
      const who = data.typing && typeof data.typing === "object" ? data.typing : null;
      const name = who && typeof who.engineer === "string" ? who.engineer.slice(0, 40) : null;
      if (who || engineerTyping) showEngineerTyping(who ? { name } : null);
      more = messages.length >= 200; // a page was full: fetch the rest at once
      if (notice.textContent === T.offline) showNotice("");
      if (outbox.length) flush(); // the server answers again: send what waited
    } catch (error) {
      if (mine !== generation) return;
      if (error instanceof HttpError && error.status === 404) {
        forgetSession();
        localStorage.removeItem(SESSION_KEY);
        showNotice(T.lost, true);
        return;
      }
      // A 429 is the server asking for a pause, not a lost connection: wait as long as it asks.
      if (error instanceof HttpError && error.status === 429) wait = error.retryAfter;
      else showNotice(T.offline, true);
    }
    let delay = document.hidden ? HIDDEN_POLL_MS : POLL_MS;
    if (quickPolls > 0) {
      quickPolls -= 1;
      delay = QUICK_POLL_MS;
    }
    if (wait !== null) {
      schedulePoll(Math.max(wait, delay));
      return;
    }
    schedulePoll(more ? 0 : delay);
  }

  // --- wiring -------------------------------------------------------------------------------------------

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, 144)}px`;
  }

  function submit() {
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    autosize();
    sendText(text);
    input.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });

  input.addEventListener("keydown", (event) => {
    // isComposing: Enter that confirms a Chinese or Japanese IME candidate must not send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      submit();
    }
  });

  input.addEventListener("input", autosize);

  fileInput.addEventListener("change", async () => {
    const files = Array.from(fileInput.files || []);
    fileInput.value = "";
    for (const file of files) await sendFile(file); // one after the other, so they show in the order chosen
  });

  document.getElementById("new-conversation").addEventListener("click", (event) => {
    event.preventDefault();
    forgetSession();
    localStorage.removeItem(SESSION_KEY);
    showNotice("");
    input.value = "";
    autosize();
    input.focus();
  });

  // The picker changes the page's words at once and, in a conversation already under way, the bot's
  // language too (the same `lang:xx` value as the bot's own language buttons); a new conversation is
  // created in it.
  for (const [code, name] of Object.entries(LANGUAGE_NAMES)) {
    const option = el("option", "", name);
    option.value = code;
    option.lang = code;
    picker.appendChild(option);
  }
  picker.value = language.code;
  picker.addEventListener("change", () => {
    const code = picker.value;
    if (!STRINGS[code] || code === language.code) return;
    setLanguage(code);
    if (sessionId) sendText(`lang:${code}`, LANGUAGE_NAMES[code]);
  });

  // Two tabs of one browser share one conversation: when the other tab starts a new one (or creates the
  // first), this tab follows it instead of writing on into the old one.
  window.addEventListener("storage", (event) => {
    if (event.key === LANGUAGE_KEY && STRINGS[event.newValue] && event.newValue !== language.code) {
      setLanguage(event.newValue);
      picker.value = event.newValue;
      return;
    }
    if (event.key !== SESSION_KEY && event.key !== null) return;
    const now = localStorage.getItem(SESSION_KEY);
    if (now === sessionId) return;
    forgetSession();
    sessionId = now;
    if (sessionId) schedulePoll(0);
  });

  window.addEventListener("online", () => { if (outbox.length) flush(); });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && sessionId) schedulePoll(0);
  });

  translatePage();
  if (sessionId) schedulePoll(0);
})();
