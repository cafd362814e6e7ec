// The engineers' local desk: lists cases, shows one, acts on it through /api/desk with a bearer token.
// Customer and engineer text is data: every piece of it goes in with textContent.
"use strict";

(function () {
  const TOKEN_KEY = "warranty.desk.token"; // sessionStorage: gone when the tab closes
  const NAME_KEY = "warranty.desk.engineer"; // localStorage: the name is not a secret
  const LIST_MS = 5000;
  const CASE_MS = 3000;
  const CLOSE_CONFIRM_MS = 5000;
  const TYPING_EVERY_MS = 3000; // while the engineer writes a reply, the customer's chat is told this often
  const LIST_ERROR = "Could not load the cases:";
  // Shown in a tab of their own; anything else is downloaded, so no uploaded file runs as a page of ours.
  const VIEWABLE = /^(image\/(jpeg|png|gif|webp)|application\/pdf|audio\/(ogg|mpeg|amr))$/;
  const STATUS_LABELS = {
    open: "Open", to_confirm: "Refusal to confirm", claimed: "Claimed", waiting_customer: "Waiting for customer", in_service: "In service",
    resolved: "Resolved", closed: "Closed",
  };
  const METHOD_LABELS = {
    remote_guidance: "Remote guidance (M2)", factory_repair: "Factory repair (M3)", door_to_door: "Door to door (M4)",
    discount_compensation: "Discount compensation (M5)", not_covered: "Not covered",
  };
  const OUTCOME_LABELS = { covered: "Covered", not_covered: "Not covered", review: "Review" };
  const PROOF_LABELS = { registry: "Registry", documents: "Documents", none: "None", altered: "Altered" };

  const $ = (id) => document.getElementById(id);
  const ui = {
    notice: $("notice"), login: $("login"), loginForm: $("login-form"), token: $("token"), engineer: $("engineer"),
    desk: $("desk"), whoami: $("whoami"), engineerName: $("engineer-name"), signOut: $("sign-out"),
    filters: $("filters"), status: $("status-filter"), search: $("search"), list: $("case-list"),
    empty: $("cases-empty"), placeholder: $("case-placeholder"), body: $("case-body"), title: $("case-title"),
    caseStatus: $("case-status"), meta: $("case-meta"), fault: $("case-fault"), units: $("units").tBodies[0],
    reasons: $("reasons"), attachments: $("attachments"), attachmentsEmpty: $("attachments-empty"),
    thread: $("thread"), replyForm: $("reply-form"), reply: $("reply"), sendReply: $("send-reply"),
    sendNote: $("send-note"), ask: $("ask"), claim: $("claim"), close: $("close"), methodForm: $("method-form"),
    method: $("method"), reasonRow: $("reason-row"), reason: $("reason"), setMethod: $("set-method"),
    result: $("action-result"), audit: $("audit"), back: $("back"),
    methodHint: $("method-hint"), goodwillRow: $("goodwill-row"), goodwill: $("goodwill"),
    correctForm: $("correct-form"), correctSerial: $("correct-serial"), correctArrival: $("correct-arrival"),
    correctProduction: $("correct-production"), correctProof: $("correct-proof"), correctNote: $("correct-note"),
    correctSubmit: $("correct-submit"),
    service: $("service"), serviceMeta: $("service-meta"), fulfilForm: $("fulfil-form"),
    fulfilAction: $("fulfil-action"), fulfilText: $("fulfil-text"), fulfilTextLabel: $("fulfil-text-label"),
    fulfilSubmit: $("fulfil-submit"), fulfilFiles: $("fulfil-files"), fulfilFilesLabel: $("fulfil-files-label"),
    notify: $("notify"), announcer: $("announcer"), assignee: $("assignee-filter"), channel: $("channel-filter"),
    canned: $("canned"), closedHint: $("closed-hint"),
  };
  const TITLE = document.title;
  const UNASSIGNED = "~unassigned";

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let engineer = localStorage.getItem(NAME_KEY) || "";
  let selected = null; // the open case's ref
  let current = null; // the open case as last fetched
  let lastListJson = "";
  let lastCaseJson = "";
  let listTimer = null;
  let caseTimer = null;
  let closeArmed = null;
  let unreadByRef = null; // ref -> unread customer messages at the last list refresh (null before the first)
  let shownUpTo = 0; // the open case's last message shown in the thread
  let seenSent = 0; // the last message id this page told the server it showed
  let cannedFor = ""; // "ref/language" the canned replies were loaded for
  const blobUrls = new Map(); // "ref/id" -> blob: URL of an attachment fetched with the token

  // --- helpers ------------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  // Brings a container's children in line with `items`, keyed: a child is made once, then only updated and
  // moved; children whose item is gone are removed. Screen readers keep their place; focus stays put.
  function sync(container, items, keyOf, create, update) {
    const existing = new Map();
    for (const child of Array.from(container.children)) existing.set(child.dataset.key, child);
    const focused = document.activeElement;
    let index = 0;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      const at = container.children[index];
      if (at !== node) container.insertBefore(node, at || null);
      index += 1;
    }
    for (const node of existing.values()) node.remove();
    if (focused && focused !== document.activeElement && focused.isConnected) focused.focus();
  }

  // Says something once in the polite live region (new messages only); older lines are dropped.
  function announce(text) {
    const line = el("p", "", text);
    ui.announcer.appendChild(line);
    while (ui.announcer.children.length > 3) ui.announcer.firstElementChild.remove();
  }

  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const languageNames = typeof Intl.DisplayNames === "function"
    ? new Intl.DisplayNames(["en"], { type: "language" }) : null;

  function when(iso) {
    const date = iso ? new Date(iso) : null;
    return date && !isNaN(date) ? dateTime.format(date) : "";
  }

  function languageLabel(code) {
    if (!code) return "—";
    let name = "";
    try {
      name = languageNames ? languageNames.of(code) : "";
    } catch (error) {
      name = "";
    }
    return name && name !== code ? `${name} (${code})` : code;
  }

  function size(bytes) {
    if (typeof bytes !== "number") return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function showNotice(text, isError) {
    ui.notice.textContent = text || "";
    ui.notice.classList.toggle("error", Boolean(isError));
    ui.notice.hidden = !text;
  }

  function showResult(text, isError) {
    ui.result.textContent = text || "";
    ui.result.classList.toggle("error", Boolean(isError));
    ui.result.hidden = !text;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
    const options = { method, headers, cache: "no-store" };
    if (body instanceof FormData) {
      options.body = body; // multipart: the browser writes its Content-Type with the boundary
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = {};
    try {
      data = await response.json();
    } catch (error) {
      data = {};
    }
    if (response.status === 401) {
      signOut(`The desk token was not accepted: ${data.error || "unauthorised"}.`);
      throw new ApiError(401, data.error || "unauthorised");
    }
    if (response.status === 503) {
      deskOff(data.error);
      throw new ApiError(503, data.error || "the desk is off");
    }
    if (!response.ok) throw new ApiError(response.status, data.error || response.statusText);
    return data;
  }

  // The case the address names (#WR-2026-000042), as references are written: upper case.
  function caseFromHash() {
    try {
      return decodeURIComponent(location.hash.slice(1)).trim().toUpperCase().slice(0, 40);
    } catch (error) {
      return ""; // a malformed %-escape typed into the address
    }
  }

  function casePath(ref, tail) {
    return `/api/desk/cases/${encodeURIComponent(ref)}${tail || ""}`;
  }

  // --- signing in and out -------------------------------------------------------------------------------

  function stopTimers() {
    clearTimeout(listTimer);
    clearTimeout(caseTimer);
  }

  function showLogin() {
    stopTimers();
    ui.desk.hidden = true;
    ui.whoami.hidden = true;
    ui.login.hidden = false;
    ui.engineer.value = engineer;
    (token ? ui.engineer : ui.token).focus();
  }

  function signOut(message) {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    showNotice(message || "", Boolean(message));
    showLogin();
  }

  function deskOff(message) {
    stopTimers();
    ui.desk.hidden = true;
    ui.whoami.hidden = true;
    ui.login.hidden = true;
    showNotice(message || "The local desk is off: set DESK_TOKEN in .env and restart the bot.", true);
  }

  async function start() {
    ui.login.hidden = true;
    ui.desk.hidden = false;
    ui.whoami.hidden = false;
    ui.engineerName.textContent = engineer;
    showNotifyButton();
    showNotice("");
    await refreshList();
    const fromHash = caseFromHash();
    if (fromHash && token) openCase(fromHash);
  }

  ui.loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    token = ui.token.value.trim();
    engineer = ui.engineer.value.trim().slice(0, 80);
    if (!token || !engineer) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    localStorage.setItem(NAME_KEY, engineer);
    ui.token.value = "";
    start();
  });

  ui.signOut.addEventListener("click", () => signOut(""));

  // --- the case list ------------------------------------------------------------------------------------

  function scheduleList(delay) {
    clearTimeout(listTimer);
    listTimer = setTimeout(refreshList, delay);
  }

  function listParams() {
    const params = new URLSearchParams();
    if (ui.status.value) params.set("status", ui.status.value);
    if (ui.assignee.value === UNASSIGNED) params.set("unassigned", "1");
    else if (ui.assignee.value) params.set("assignee", ui.assignee.value);
    if (ui.channel.value) params.set("channel", ui.channel.value);
    if (ui.search.value.trim()) params.set("q", ui.search.value.trim().slice(0, 64));
    return params;
  }

  async function refreshList() {
    if (!token) return;
    try {
      const data = await api("GET", `/api/desk/cases?${listParams()}`);
      renderList(data);
      if (ui.notice.textContent.startsWith(LIST_ERROR)) showNotice("");
    } catch (error) {
      if (error.status === 401 || error.status === 503) return;
      showNotice(`${LIST_ERROR} ${error.message}`, true);
    }
    scheduleList(LIST_MS);
  }

  function outcomeText(outcomes) {
    const entries = Object.entries(outcomes || {});
    if (!entries.length) return "no units";
    if (entries.length === 1) {
      const [outcome, count] = entries[0];
      return `${count > 1 ? `${count} ` : ""}${OUTCOME_LABELS[outcome] || outcome}`.trim();
    }
    return entries.map(([outcome, count]) => `${count} ${(OUTCOME_LABELS[outcome] || outcome).toLowerCase()}`).join(", ");
  }

  function lastText(last) {
    if (!last) return "";
    const who = { customer: "Customer", bot: "Bot", engineer: last.author_name || "Engineer",
      note: `Note by ${last.author_name || "an engineer"}` }[last.author] || last.author;
    return `${who}: ${last.text}`;
  }

  function syncOptions(select, fixed, values, labelOf) {
    const chosen = select.value;
    const wanted = [...fixed, ...values.map((v) => [v, labelOf(v)])];
    sync(select, wanted, ([value]) => value, ([value]) => {
      const option = el("option");
      option.value = value;
      return option;
    }, (option, [, label]) => setText(option, label));
    select.value = wanted.some(([value]) => value === chosen) ? chosen : "";
  }

  function renderFacets(data) {
    const assignees = Array.isArray(data.assignees) ? data.assignees : [];
    const others = assignees.filter((name) => name !== engineer);
    syncOptions(ui.assignee, [["", "Anyone"], [UNASSIGNED, "Nobody yet"], [engineer, `Me (${engineer})`]], others,
      (name) => name);
    const channels = Array.isArray(data.channels) ? data.channels : [];
    if (ui.channel.value && !channels.includes(ui.channel.value)) channels.push(ui.channel.value);
    syncOptions(ui.channel, [["", "All channels"]], channels, (name) => name);
  }

  function renderList(data) {
    const cases = Array.isArray(data.cases) ? data.cases : [];
    renderFacets(data);
    const unreadCases = typeof data.unread_cases === "number" ? data.unread_cases : 0;
    document.title = unreadCases ? `(${unreadCases}) ${TITLE}` : TITLE;
    signalNew(cases);
    const json = JSON.stringify(cases);
    if (json === lastListJson) return markSelected();
    lastListJson = json;
    ui.empty.hidden = cases.length > 0;
    sync(ui.list, cases, (item) => item.ref, createRow, updateRow);
    markSelected();
  }

  function createRow(item) {
    const li = el("li");
    const button = el("button");
    button.type = "button";
    button.dataset.ref = item.ref;
    button.appendChild(el("span", "ref", item.ref));
    const badges = el("span", "badges");
    badges.appendChild(el("span", "unread"));
    badges.appendChild(el("span", "badge status"));
    button.appendChild(badges);
    button.appendChild(el("span", "line2"));
    const last = el("span", "last");
    last.dir = "auto";
    button.appendChild(last);
    button.appendChild(el("time", "when"));
    button.addEventListener("click", () => openCase(item.ref));
    li.appendChild(button);
    return li;
  }

  function updateRow(li, item) {
    const button = li.firstElementChild;
    const unread = button.querySelector(".unread");
    const count = item.unread || 0;
    setText(unread, count ? `${count} new` : "");
    unread.hidden = !count;
    unread.title = count ? `${count} customer message${count === 1 ? "" : "s"} not read on the desk yet` : "";
    li.classList.toggle("has-unread", count > 0);
    const status = button.querySelector(".status");
    const statusClass = `badge status ${item.status}`;
    if (status.className !== statusClass) status.className = statusClass;
    setText(status, STATUS_LABELS[item.status] || item.status);
    const parts = [outcomeText(item.outcomes), item.customer, item.channel, languageLabel(item.language)];
    parts.push(item.claimed_by ? `claimed by ${item.claimed_by}` : "nobody yet");
    setText(button.querySelector(".line2"), parts.filter(Boolean).join(" · "));
    setText(button.querySelector(".last"), lastText(item.last_message));
    const time = button.querySelector(".when");
    time.dateTime = item.updated_at || "";
    setText(time, `Last activity ${when(item.updated_at)}`);
  }

  // A customer wrote on a case since the last refresh: say it once (live region), and notify when the tab is
  // in the background and the browser allows it.
  function signalNew(cases) {
    const previous = unreadByRef;
    unreadByRef = new Map(cases.map((c) => [c.ref, c.unread || 0]));
    if (previous === null) return;
    for (const item of cases) {
      const before = previous.has(item.ref) ? previous.get(item.ref) : 0;
      if ((item.unread || 0) <= before) continue;
      const text = item.last_customer_message ? item.last_customer_message.text : "";
      // The open case's thread says its own new messages.
      if (item.ref !== selected) announce(`New message from the customer on ${item.ref}${text ? `: ${text}` : "."}`);
      if (document.hidden && "Notification" in window && Notification.permission === "granted") {
        try {
          new Notification(`New message on ${item.ref}`, { body: text, tag: item.ref });
        } catch (error) {
          // a browser that only notifies from a service worker: the title's count still says it
        }
      }
    }
  }

  function markSelected() {
    for (const button of ui.list.querySelectorAll("button")) {
      button.setAttribute("aria-current", button.dataset.ref === selected ? "true" : "false");
    }
  }

  let searchTimer = null;
  ui.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => refreshList(), 300);
  });
  ui.status.addEventListener("change", () => refreshList());
  ui.assignee.addEventListener("change", () => refreshList());
  ui.channel.addEventListener("change", () => refreshList());
  ui.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    refreshList();
  });

  // --- one case -----------------------------------------------------------------------------------------

  function forgetBlobs() {
    for (const url of blobUrls.values()) URL.revokeObjectURL(url);
    blobUrls.clear();
  }

  async function openCase(ref) {
    if (ref !== selected) {
      forgetBlobs();
      lastCaseJson = "";
      current = null;
      shownUpTo = 0;
      seenSent = 0;
      ui.thread.replaceChildren();
      ui.reply.value = "";
      ui.reason.value = "";
      showResult("");
      disarmClose();
    }
    selected = ref;
    history.replaceState(null, "", `#${encodeURIComponent(ref)}`);
    ui.desk.classList.add("showing-case");
    markSelected();
    await refreshCase(true);
  }

  function scheduleCase(delay) {
    clearTimeout(caseTimer);
    caseTimer = setTimeout(() => refreshCase(false), delay);
  }

  async function refreshCase(first) {
    const ref = selected;
    if (!ref || !token) return;
    try {
      const data = await api("GET", casePath(ref));
      if (ref !== selected) return;
      renderCase(data, first);
    } catch (error) {
      if (error.status === 401 || error.status === 503) return;
      if (ref !== selected) return;
      if (error.status === 404) {
        showNotice(`No case ${ref}.`, true);
        selected = null;
        ui.body.hidden = true;
        ui.placeholder.hidden = false;
        return;
      }
      showResult(`Could not load ${ref}: ${error.message}`, true);
    }
    scheduleCase(CASE_MS);
  }

  function renderCase(data, first) {
    const json = JSON.stringify(data);
    if (json === lastCaseJson) return;
    lastCaseJson = json;
    const initial = current === null;
    current = data;
    ui.placeholder.hidden = true;
    ui.body.hidden = false;
    ui.title.textContent = data.ref;
    ui.caseStatus.className = `badge ${data.status}`;
    ui.caseStatus.textContent = STATUS_LABELS[data.status] || data.status;

    renderMeta(data);
    ui.fault.textContent = data.fault || "—";
    ui.fault.lang = data.language || "";
    renderUnits(data);
    renderAttachments(data);
    renderThread(data, first);
    renderAudit(data);
    renderActions(data, initial);
    renderService(data);
    loadCanned(data);
    markSeen();
  }

  // The steps after the chosen method (docs/fulfilment.md): the step, the RMA, shipments, and the next steps.
  function renderService(data) {
    const record = data.fulfilment || null;
    const credits = [...(data.credits || []), ...(data.credits_available || [])];
    ui.service.hidden = !record && !credits.length;
    ui.serviceMeta.replaceChildren();
    const rows = [];
    if (record) {
      const info = record.data || {};
      rows.push(["Step", record.step_label || record.step]);
      if (record.rma) rows.push(["RMA", record.rma]);
      for (const [key, name] of [["inbound", "Customer's shipment"], ["return", "Return shipment"], ["parts_tracking", "Parts shipment"]]) {
        if (info[key]) rows.push([name, `${info[key].carrier || ""} ${info[key].tracking}`.trim()]);
      }
      if (info.parts) rows.push(["Parts", info.parts.join(", ")]);
      if (info.slots) rows.push(["Proposed slots", info.slots.map((s) => s.replace("T", " ")).join(" · ")]);
      if (info.booked) rows.push(["Visit", info.booked.replace("T", " ")]);
      if (info.diagnosis) rows.push(["Diagnosis", info.diagnosis]);
      if (info.report) rows.push(["Technician's report", info.report]);
    }
    for (const credit of data.credits || []) rows.push([`Credit on ${credit.order_id}`, `${credit.amount} ${credit.currency || ""}`.trim()]);
    for (const credit of data.credits_available || []) {
      rows.push([`Credit waiting (${credit.case_ref})`, `${credit.amount} ${credit.currency || ""} for order ${credit.order_id}: take it off this order`]);
    }
    for (const [name, value] of rows) {
      const box = el("div");
      box.appendChild(el("dt", "", name));
      const dd = el("dd", "", value);
      dd.dir = "auto";
      box.appendChild(dd);
      ui.serviceMeta.appendChild(box);
    }
    const actions = (record && record.actions) || [];
    const chosen = ui.fulfilAction.value;
    ui.fulfilAction.replaceChildren();
    for (const action of actions) {
      const option = el("option", "", action.label);
      option.value = action.action;
      option.dataset.input = action.input || "";
      ui.fulfilAction.appendChild(option);
    }
    if (actions.some((a) => a.action === chosen)) ui.fulfilAction.value = chosen;
    ui.fulfilForm.hidden = !actions.length || data.status === "closed";
    fulfilChanged();
  }

  function fulfilChanged() {
    const option = ui.fulfilAction.selectedOptions[0];
    const needs = option ? option.dataset.input : "";
    ui.fulfilText.hidden = ui.fulfilTextLabel.hidden = !needs;
    ui.fulfilTextLabel.textContent = needs ? needs[0].toUpperCase() + needs.slice(1) : "Details";
    // A guidance step may carry files (a manual, a wiring photo): sent to the customer, kept on the case.
    ui.fulfilFiles.hidden = ui.fulfilFilesLabel.hidden = !option || option.value !== "guide";
  }

  // The desk has shown the open case's messages: tell the server (kept on the case, for the whole desk), so
  // its badge goes for every engineer. Only while the page is in view: a tab in the background has seen nothing.
  async function markSeen() {
    const data = current;
    if (!data || document.hidden || data.ref !== selected) return;
    const messages = Array.isArray(data.messages) ? data.messages : [];
    const seen = Math.max(data.seen_id || 0, seenSent);
    const unseen = messages.some((m) => m.author === "customer" && m.id > seen);
    if (!unseen || !shownUpTo) return;
    seenSent = shownUpTo;
    try {
      await api("POST", casePath(data.ref, "/seen"), { message_id: shownUpTo });
      lastListJson = "";
      refreshList();
    } catch (error) {
      if (error.status !== 401 && error.status !== 503) seenSent = 0; // try again at the next refresh
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) markSeen();
  });

  async function loadCanned(data) {
    const key = `${data.ref}/${data.language}`;
    if (cannedFor === key) return;
    cannedFor = key;
    const fill = (replies) =>
      sync(ui.canned, [{ id: "", title: "Choose a canned reply…", text: "" }, ...replies], (r) => r.id, () => el("option"),
        (option, reply) => {
          option.value = reply.id;
          setText(option, reply.id && reply.language !== data.language ? `${reply.title} (${languageLabel(reply.language)})` : reply.title);
          option.dataset.text = reply.text;
        });
    fill([]); // the previous case's replies (another language, another reference) are not offered meanwhile
    try {
      const answer = await api("GET", casePath(data.ref, "/replies"));
      if (cannedFor !== key) return;
      fill(Array.isArray(answer.replies) ? answer.replies : []);
      ui.canned.value = "";
    } catch (error) {
      cannedFor = "";
    }
  }

  ui.canned.addEventListener("change", () => {
    const option = ui.canned.selectedOptions[0];
    const text = option && option.value ? option.dataset.text || "" : "";
    if (!text) return;
    const before = ui.reply.value.trim();
    ui.reply.value = before ? `${before}\n\n${text}` : text;
    ui.canned.value = "";
    ui.reply.focus();
  });

  function renderMeta(data) {
    const rows = [
      ["Status", STATUS_LABELS[data.status] || data.status],
      ["Language", languageLabel(data.language)],
      ["Channel", data.channel],
      ["Customer", data.customer || "—"],
      ["Company (registry)", data.company || "not in the registry"],
      ["Claimed by", data.claimed_by || "nobody yet"],
      ["Method", data.method ? METHOD_LABELS[data.method] || data.method : "not chosen"],
      ["Claim date", data.claim_date],
      ["Opened", when(data.created_at)],
      ["Updated", when(data.updated_at)],
    ];
    for (const order of data.orders || []) {
      const parts = [order.customer || "—", order.order_total ? `${order.order_total} ${order.currency || ""}`.trim() : null,
        order.order_pieces ? `${order.order_pieces} pieces` : null,
        `cargo compensation: ${order.cargo_compensation ? "yes (M1)" : "no"}`,
        `${order.units} unit${order.units === 1 ? "" : "s"} in this case`,
        order.discount_amount ? `1% = ${order.discount_amount}` : null];
      rows.push([`Order ${order.order_id}`, parts.filter(Boolean).join(" · ")]);
    }
    if (data.prefers_discount) rows.push(["Customer prefers", "discount compensation"]);
    if (data.refusal_reason) rows.push(["Refusal reason", data.refusal_reason]);
    if (data.rating) rows.push(["Rating", `${data.rating} / 5`]);
    sync(ui.meta, rows, ([name]) => name, ([name]) => {
      const box = el("div");
      box.appendChild(el("dt", "", name));
      const dd = el("dd");
      dd.dir = "auto";
      box.appendChild(dd);
      return box;
    }, (box, [, value]) => setText(box.lastElementChild, value));
  }

  const UNIT_COLUMNS = 10;

  function unitCells(unit) {
    const registry = unit.registry || null;
    const proof = (unit.facts || {}).proof;
    return [unit.serial, unit.model || "—", unit.production_date || "—", unit.port_arrival_date || "—",
      unit.warranty_end || "—", unit.order_id || (registry && registry.order_id) || "—",
      registry ? (registry.cargo_compensation ? "Yes (M1)" : "No") : "—", proof ? PROOF_LABELS[proof] || proof : "—",
      null, (unit.clauses || []).join(", ")];
  }

  function renderUnits(data) {
    const units = Array.isArray(data.units) ? data.units : [];
    // The API sends a large case's units a page at a time; a last row says how many this page leaves out.
    const total = typeof data.unit_count === "number" ? data.unit_count : units.length;
    const rows = units.map((unit) => ({ key: `unit:${unit.serial}`, unit }));
    if (total > units.length) {
      rows.push({ key: "more", more: `… and ${total - units.length} more units (the first ${units.length} are shown)` });
    }
    sync(ui.units, rows, (row) => row.key, (row) => {
      const tr = el("tr");
      if (row.more) {
        const cell = el("td", "more");
        cell.colSpan = UNIT_COLUMNS;
        tr.appendChild(cell);
        return tr;
      }
      for (let i = 0; i < UNIT_COLUMNS; i += 1) tr.appendChild(el("td"));
      tr.children[8].appendChild(el("span", "badge"));
      return tr;
    }, (tr, row) => {
      if (row.more) return setText(tr.firstElementChild, row.more);
      const unit = row.unit;
      unitCells(unit).forEach((text, i) => { if (text !== null) setText(tr.children[i], text); });
      const badge = tr.children[8].firstElementChild;
      const className = `badge ${unit.outcome}`;
      if (badge.className !== className) badge.className = className;
      setText(badge, OUTCOME_LABELS[unit.outcome] || unit.outcome);
    });
    const reasons = [];
    for (const unit of units) {
      for (const reason of (unit.decision || {}).reasons || []) reasons.push(`${unit.serial}: ${reason}`);
    }
    const allowed = data.allowed_methods || [];
    const names = allowed.map((m) => METHOD_LABELS[m] || m).join(", ");
    reasons.push(allowed.length ? `Methods the policy allows: ${names}.`
      : "The policy allows no service method: confirm the refusal, correct a unit's facts, or give goodwill.");
    sync(ui.reasons, reasons, (text) => text, (text) => {
      const li = el("li", "", text);
      li.dir = "auto";
      return li;
    }, () => {});
    // The correction form lists the case's units; the choice survives a refresh.
    const chosen = ui.correctSerial.value;
    sync(ui.correctSerial, units, (unit) => unit.serial, () => el("option"), (option, unit) => {
      option.value = unit.serial;
      setText(option, `${unit.serial} (${OUTCOME_LABELS[unit.outcome] || unit.outcome})`);
    });
    if (units.some((u) => u.serial === chosen)) ui.correctSerial.value = chosen;
    ui.correctSubmit.disabled = !units.length || data.status === "closed";
  }

  function attachmentButton(ref, attachment) {
    const button = el("button");
    button.type = "button";
    button.dataset.attachment = String(attachment.id);
    const mime = attachment.mime || "";
    const kind = mime.startsWith("image/") ? "image" : mime === "application/pdf" ? "PDF" : mime.split("/")[0] || "file";
    button.appendChild(el("span", "badge", kind));
    const name = el("span", "", attachment.name || "file");
    name.dir = "auto";
    button.appendChild(name);
    const details = [attachment.mime, size(attachment.size)].filter(Boolean).join(", ");
    if (details) button.appendChild(el("span", "muted", details));
    button.title = `Open ${attachment.name || "the file"}`;
    button.addEventListener("click", () => openAttachment(ref, attachment));
    return button;
  }

  function renderAttachments(data) {
    const files = Array.isArray(data.attachments) ? data.attachments : [];
    ui.attachmentsEmpty.hidden = files.length > 0;
    // Files only ever join a case: each card is made once and stays.
    sync(ui.attachments, files, (attachment) => attachment.id, (attachment) => {
      const li = el("li");
      const button = attachmentButton(data.ref, attachment);
      if (/^image\/(jpeg|png|gif|webp)$/.test(attachment.mime || "")) {
        const image = el("img");
        image.alt = attachment.name || "";
        button.prepend(image);
        attachmentUrl(data.ref, attachment).then((url) => { image.src = url; }).catch(() => image.remove());
      }
      li.appendChild(button);
      return li;
    }, () => {});
  }

  function authorLabel(message, customer) {
    switch (message.author) {
      case "customer": return customer ? `Customer (${customer})` : "Customer";
      case "bot": return "Bot";
      case "engineer": return `${message.author_name || "Engineer"} (engineer)`;
      case "note": return `Internal note by ${message.author_name || "an engineer"} (not sent to the customer)`;
      default: return message.author;
    }
  }

  function messageItem(message, data, files) {
    const li = el("li", `from-${message.author}`);
    li.dataset.id = String(message.id);
    const author = el("span", "author", authorLabel(message, data.customer));
    author.dir = "auto";
    const time = el("time", "", when(message.created_at));
    time.dateTime = message.created_at || "";
    author.appendChild(time);
    li.appendChild(author);
    if (message.text) {
      const text = el("div", "text", message.text);
      text.dir = "auto";
      li.appendChild(text);
    }
    const ids = Array.isArray(message.attachment_ids) ? message.attachment_ids : [];
    if (ids.length) {
      const list = el("div", "files");
      for (const id of ids) {
        const attachment = files.get(id);
        if (attachment) list.appendChild(attachmentButton(data.ref, attachment));
        else list.appendChild(el("span", "muted", `attachment ${id}`));
      }
      li.appendChild(list);
    }
    return li;
  }

  // Messages are only ever added: the thread appends the new ones and leaves the rest alone. A new customer
  // message (after the first showing) is said once in the live region.
  function renderThread(data, first) {
    const messages = Array.isArray(data.messages) ? data.messages : [];
    const files = new Map((data.attachments || []).map((a) => [a.id, a]));
    const box = ui.thread;
    const follow = first || box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    box.lang = data.language || "";
    const initial = shownUpTo === 0;
    for (const message of messages) {
      if (typeof message.id !== "number" || message.id <= shownUpTo) continue;
      box.appendChild(messageItem(message, data, files));
      shownUpTo = message.id;
      if (!initial && message.author === "customer") {
        const text = message.text || ((message.attachment_ids || []).length ? "a file" : "");
        announce(`New message from the customer on ${data.ref}: ${text}`);
      }
    }
    if (follow) box.scrollTop = box.scrollHeight;
  }

  function renderAudit(data) {
    const entries = (data.audit || []).map((entry, index) => ({ entry, index }));
    sync(ui.audit, entries, ({ index }) => index, ({ entry }) => {
      const detail = entry.detail && typeof entry.detail === "object"
        ? Object.entries(entry.detail).filter(([, v]) => v !== null && v !== undefined && v !== "")
          .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")
        : "";
      const li = el("li", "", `${when(entry.at)} — ${entry.actor}: ${entry.action}${detail ? ` (${detail})` : ""}`);
      li.dir = "auto";
      return li;
    }, () => {});
  }

  function renderActions(data, initial) {
    const closed = data.status === "closed";
    // What cannot work on a closed case is off (the server would refuse it with 409 and say why).
    ui.sendReply.disabled = closed;
    ui.ask.disabled = closed;
    ui.canned.disabled = closed;
    ui.closedHint.hidden = !closed;
    ui.claim.disabled = closed || data.claimed_by === engineer;
    ui.claim.textContent = data.claimed_by && data.claimed_by !== engineer ? `Take over from ${data.claimed_by}` : "Claim";
    ui.setMethod.disabled = closed;
    ui.method.disabled = closed;
    ui.close.disabled = closed;
    const allowed = new Set(data.allowed_methods || []);
    for (const option of ui.method.options) {
      const base = METHOD_LABELS[option.value] || option.value;
      if (option.value === "not_covered") {
        option.textContent = data.status === "to_confirm" ? "Not covered: confirm the refusal" : base;
      } else {
        option.textContent = allowed.has(option.value) ? base : `${base}: outside the decision`;
      }
    }
    if (initial) {
      // Start from a method the policy allows; never from one it does not (then: the refusal to confirm).
      const first = Array.from(ui.method.options).find((o) => allowed.has(o.value));
      ui.method.value = data.method || (first ? first.value : "not_covered");
      ui.goodwill.value = "";
    }
    methodChanged();
  }

  function methodChanged() {
    const method = ui.method.value;
    const allowed = new Set((current && current.allowed_methods) || []);
    const outside = method !== "not_covered" && !allowed.has(method);
    ui.goodwillRow.hidden = !outside;
    ui.reasonRow.hidden = method !== "not_covered" && !outside;
    ui.methodHint.textContent = outside
      ? "The decision does not allow this method: say whether it is goodwill or chargeable, and why."
      : "";
  }

  // --- attachments: fetched with the token, shown from blob: URLs ----------------------------------------

  async function attachmentUrl(ref, attachment) {
    const key = `${ref}/${attachment.id}`;
    if (blobUrls.has(key)) return blobUrls.get(key);
    const response = await fetch(casePath(ref, `/attachments/${attachment.id}`), {
      headers: { Authorization: `Bearer ${token}` }, cache: "no-store",
    });
    if (!response.ok) throw new ApiError(response.status, `could not fetch ${attachment.name}`);
    const raw = await response.blob();
    const type = VIEWABLE.test(attachment.mime || "") ? attachment.mime : "application/octet-stream";
    const url = URL.createObjectURL(new Blob([raw], { type }));
    blobUrls.set(key, url);
    return url;
  }

  async function openAttachment(ref, attachment) {
    try {
      const url = await attachmentUrl(ref, attachment);
      const link = el("a");
      link.href = url;
      link.rel = "noopener";
      if (VIEWABLE.test(attachment.mime || "")) link.target = "_blank";
      else link.download = attachment.name || "attachment";
      document.body.appendChild(link);
      link.click();
      link.remove();
    } catch (error) {
      showResult(`Could not open ${attachment.name || "the file"}: ${error.message}`, true);
    }
  }

  // --- actions ------------------------------------------------------------------------------------------

  async function act(label, path, body, after) {
    const ref = selected;
    if (!ref) return;
    showResult("");
    try {
      if (body instanceof FormData) body.append("engineer", engineer);
      await api("POST", casePath(ref, path), body instanceof FormData ? body : { ...body, engineer });
      if (after) after();
      showResult(label);
      lastListJson = "";
      refreshList();
      await refreshCase(false);
    } catch (error) {
      if (error.status === 401 || error.status === 503) return;
      showResult(`${error.message}`, true);
    }
  }

  function sendMessage(internal) {
    const text = ui.reply.value;
    if (!text.trim()) {
      showResult("Write the message first.", true);
      ui.reply.focus();
      return;
    }
    act(internal ? "Internal note added." : "Reply sent to the customer.", "/messages", { text, internal },
      () => { ui.reply.value = ""; typingSentAt = 0; });
  }

  // The customer's web chat shows "… is typing" while an engineer writes here; the server forgets it a few
  // seconds after the last signal, and at once when the reply arrives. (A note is typed in the same box:
  // the customer sees someone typing until it is sent, and no message.)
  let typingRef = null;
  let typingSentAt = 0;
  ui.reply.addEventListener("input", () => {
    const ref = selected;
    if (!ref || !ui.reply.value.trim() || !current || current.ref !== ref || current.status === "closed") return;
    const now = Date.now();
    if (ref === typingRef && now - typingSentAt < TYPING_EVERY_MS) return;
    typingRef = ref;
    typingSentAt = now;
    api("POST", casePath(ref, "/typing"), { engineer }).catch(() => {}); // only a hint: a failure shows nothing
  });

  ui.replyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage(false);
  });
  ui.sendNote.addEventListener("click", () => sendMessage(true));
  ui.ask.addEventListener("click", () => {
    const question = ui.reply.value;
    if (!question.trim()) {
      showResult("Write the question first.", true);
      ui.reply.focus();
      return;
    }
    act("Question sent; the case waits for the customer.", "/ask", { question }, () => { ui.reply.value = ""; });
  });
  ui.reply.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      sendMessage(false);
    }
  });

  ui.claim.addEventListener("click", () => act("Case claimed.", "/claim", {}));

  ui.method.addEventListener("change", methodChanged);

  ui.methodForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const method = ui.method.value;
    const body = { method };
    const outside = !ui.goodwillRow.hidden;
    if (outside) {
      if (!ui.goodwill.value) {
        showResult("Outside the decision: choose goodwill or chargeable.", true);
        ui.goodwill.focus();
        return;
      }
      body.goodwill = ui.goodwill.value;
    }
    if (method === "not_covered" || outside) {
      if (!ui.reason.value.trim()) {
        showResult("Give the reason the customer will read.", true);
        ui.reason.focus();
        return;
      }
      body.reason = ui.reason.value;
    }
    act(`Method set: ${METHOD_LABELS[method] || method}${body.goodwill ? ` (${body.goodwill})` : ""}.`, "/method",
      body, () => { ui.reason.value = ""; ui.goodwill.value = ""; });
  });

  ui.fulfilAction.addEventListener("change", fulfilChanged);
  ui.fulfilForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const option = ui.fulfilAction.selectedOptions[0];
    if (!option) return;
    if (option.dataset.input && !ui.fulfilText.value.trim()) {
      showResult(`Give ${option.dataset.input}.`, true);
      return;
    }
    const files = option.value === "guide" ? Array.from(ui.fulfilFiles.files || []) : [];
    let body = { action: option.value, text: ui.fulfilText.value };
    if (files.length) {
      body = new FormData();
      body.append("action", option.value);
      body.append("text", ui.fulfilText.value);
      for (const file of files) body.append("file", file, file.name);
    }
    act(`${option.textContent}: recorded; the customer is told${files.length ? `, with ${files.length} file(s)` : ""}.`,
      files.length ? "/fulfil/files" : "/fulfil", body,
      () => { ui.fulfilText.value = ""; ui.fulfilFiles.value = ""; });
  });

  ui.correctForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const serial = ui.correctSerial.value;
    const body = {};
    if (ui.correctArrival.value) body.port_arrival_date = ui.correctArrival.value;
    if (ui.correctProduction.value) body.production_date = ui.correctProduction.value;
    if (ui.correctProof.value) body.proof = ui.correctProof.value;
    if (!serial || !Object.keys(body).length) {
      showResult("Give a port arrival date, a production date or the proof to correct.", true);
      return;
    }
    if (ui.correctNote.value.trim()) body.note = ui.correctNote.value;
    act(`Unit ${serial} corrected and decided again.`, `/units/${encodeURIComponent(serial)}/correct`, body, () => {
      ui.correctArrival.value = "";
      ui.correctProduction.value = "";
      ui.correctProof.value = "";
      ui.correctNote.value = "";
    });
  });

  // Closing cannot be undone, so it takes a second click (a confirm() dialog would block the page).
  function disarmClose() {
    clearTimeout(closeArmed);
    closeArmed = null;
    ui.close.textContent = "Close case";
  }

  ui.close.addEventListener("click", () => {
    if (!closeArmed) {
      ui.close.textContent = "Click again to close";
      closeArmed = setTimeout(disarmClose, CLOSE_CONFIRM_MS);
      return;
    }
    disarmClose();
    act("Case closed.", "/close", {});
  });

  function closeCase() {
    selected = null;
    clearTimeout(caseTimer);
    ui.desk.classList.remove("showing-case");
    history.replaceState(null, "", location.pathname);
    markSelected();
  }

  ui.back.addEventListener("click", closeCase);

  // The address names the open case (#WR-2026-000042): changing it in an open tab opens that case.
  window.addEventListener("hashchange", () => {
    if (!token || ui.desk.hidden) return;
    const ref = caseFromHash();
    if (ref && ref !== selected) openCase(ref);
    else if (!ref && selected) closeCase();
  });

  // Browser notifications for new customer messages while the tab is in the background: asked for only when
  // the engineer clicks, never on load.
  function showNotifyButton() {
    ui.notify.hidden = !("Notification" in window) || Notification.permission !== "default";
  }

  ui.notify.addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } catch (error) {
      // an old browser without the promise form: nothing to do
    }
    showNotifyButton();
  });

  // --- start --------------------------------------------------------------------------------------------

  async function probe() {
    // Without a token: 503 says the desk is off, 401 that it is on and waits for one.
    try {
      const response = await fetch("/api/desk/cases", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.status === 503) {
        const data = await response.json().catch(() => ({}));
        deskOff(data.error);
        return false;
      }
    } catch (error) {
      showNotice("The desk cannot be reached.", true);
    }
    return true;
  }

  probe().then((on) => {
    if (!on) return;
    if (token && engineer) start();
    else showLogin();
  });
})();
