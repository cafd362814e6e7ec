// The engineers' local desk: lists cases, shows one, acts on it through /api/desk with a bearer token.
// Customer and engineer text is data: every piece of it goes in with textContent.
"use strict";

(function () {
  const TOKEN_KEY = "warranty.desk.token"; // sessionStorage: gone when the tab closes
  const NAME_KEY = "warranty.desk.engineer"; // localStorage: the name is not a secret
  const LIST_MS = 5000;
  const CASE_MS = 3000;
  const CLOSE_CONFIRM_MS = 5000;
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
    fulfilSubmit: $("fulfil-submit"),
  };

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let engineer = localStorage.getItem(NAME_KEY) || "";
  let selected = null; // the open case's ref
  let current = null; // the open case as last fetched
  let lastListJson = "";
  let lastCaseJson = "";
  let listTimer = null;
  let caseTimer = null;
  let closeArmed = null;
  const blobUrls = new Map(); // "ref/id" -> blob: URL of an attachment fetched with the token

  // --- helpers ------------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
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
    if (body !== undefined) {
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
    showNotice("");
    await refreshList();
    const fromHash = decodeURIComponent(location.hash.slice(1));
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

  async function refreshList() {
    if (!token) return;
    const params = new URLSearchParams();
    if (ui.status.value) params.set("status", ui.status.value);
    if (ui.search.value.trim()) params.set("q", ui.search.value.trim().slice(0, 64));
    try {
      const data = await api("GET", `/api/desk/cases?${params}`);
      renderList(Array.isArray(data.cases) ? data.cases : []);
      if (ui.notice.textContent.startsWith(LIST_ERROR)) showNotice("");
    } catch (error) {
      if (error.status === 401 || error.status === 503) return;
      showNotice(`${LIST_ERROR} ${error.message}`, true);
    }
    scheduleList(LIST_MS);
  }

  function renderList(cases) {
    const json = JSON.stringify(cases);
    if (json === lastListJson) return markSelected();
    lastListJson = json;
    const focusedRef = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.ref : null;
    ui.list.replaceChildren();
    ui.empty.hidden = cases.length > 0;
    for (const item of cases) {
      const li = el("li");
      const button = el("button");
      button.type = "button";
      button.dataset.ref = item.ref;
      button.appendChild(el("span", "ref", item.ref));
      button.appendChild(el("span", `badge ${item.status}`, STATUS_LABELS[item.status] || item.status));
      const parts = [`${item.units} unit${item.units === 1 ? "" : "s"}`, languageLabel(item.language), item.channel];
      if (item.claimed_by) parts.push(`claimed by ${item.claimed_by}`);
      parts.push(when(item.updated_at));
      const line2 = el("span", "line2", parts.filter(Boolean).join(" · "));
      button.appendChild(line2);
      button.addEventListener("click", () => openCase(item.ref));
      li.appendChild(button);
      ui.list.appendChild(li);
      if (item.ref === focusedRef) button.focus();
    }
    markSelected();
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
  }

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
    ui.meta.replaceChildren();
    for (const [name, value] of rows) {
      const box = el("div");
      box.appendChild(el("dt", "", name));
      const dd = el("dd", "", value);
      dd.dir = "auto";
      box.appendChild(dd);
      ui.meta.appendChild(box);
    }
  }

  function renderUnits(data) {
    const units = Array.isArray(data.units) ? data.units : [];
    ui.units.replaceChildren();
    ui.reasons.replaceChildren();
    for (const unit of units) {
      const row = el("tr");
      row.appendChild(el("td", "", unit.serial));
      row.appendChild(el("td", "", unit.model || "—"));
      row.appendChild(el("td", "", unit.production_date || "—"));
      row.appendChild(el("td", "", unit.port_arrival_date || "—"));
      row.appendChild(el("td", "", unit.warranty_end || "—"));
      const registry = unit.registry || null;
      row.appendChild(el("td", "", unit.order_id || (registry && registry.order_id) || "—"));
      row.appendChild(el("td", "", registry ? (registry.cargo_compensation ? "Yes (M1)" : "No") : "—"));
      const proof = (unit.facts || {}).proof;
      row.appendChild(el("td", "", proof ? PROOF_LABELS[proof] || proof : "—"));
      const outcome = el("td");
      outcome.appendChild(el("span", `badge ${unit.outcome}`, OUTCOME_LABELS[unit.outcome] || unit.outcome));
      row.appendChild(outcome);
      row.appendChild(el("td", "", (unit.clauses || []).join(", ")));
      ui.units.appendChild(row);
      const decision = unit.decision || {};
      for (const reason of decision.reasons || []) {
        const li = el("li", "", `${unit.serial}: ${reason}`);
        li.dir = "auto";
        ui.reasons.appendChild(li);
      }
    }
    // The API sends a large case's units a page at a time; say how many this page leaves out.
    const total = typeof data.unit_count === "number" ? data.unit_count : units.length;
    if (total > units.length) {
      const row = el("tr");
      const cell = el("td", "more", `… and ${total - units.length} more units (the first ${units.length} are shown)`);
      cell.colSpan = 10;
      row.appendChild(cell);
      ui.units.appendChild(row);
    }
    const allowed = data.allowed_methods || [];
    const names = allowed.map((m) => METHOD_LABELS[m] || m).join(", ");
    ui.reasons.appendChild(el("li", "", allowed.length ? `Methods the policy allows: ${names}.`
      : "The policy allows no service method: confirm the refusal, correct a unit's facts, or give goodwill."));
    // The correction form lists the case's units; the choice survives a refresh.
    const chosen = ui.correctSerial.value;
    ui.correctSerial.replaceChildren();
    for (const unit of units) {
      const option = el("option", "", `${unit.serial} (${OUTCOME_LABELS[unit.outcome] || unit.outcome})`);
      option.value = unit.serial;
      ui.correctSerial.appendChild(option);
    }
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
    ui.attachments.replaceChildren();
    ui.attachmentsEmpty.hidden = files.length > 0;
    for (const attachment of files) {
      const li = el("li");
      const button = attachmentButton(data.ref, attachment);
      if (/^image\/(jpeg|png|gif|webp)$/.test(attachment.mime || "")) {
        const image = el("img");
        image.alt = attachment.name || "";
        button.prepend(image);
        attachmentUrl(data.ref, attachment).then((url) => { image.src = url; }).catch(() => image.remove());
      }
      li.appendChild(button);
      ui.attachments.appendChild(li);
    }
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

  function renderThread(data, first) {
    const messages = Array.isArray(data.messages) ? data.messages : [];
    const files = new Map((data.attachments || []).map((a) => [a.id, a]));
    const box = ui.thread;
    const follow = first || box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    box.lang = data.language || "";
    box.replaceChildren();
    for (const message of messages) {
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
      box.appendChild(li);
    }
    if (follow) box.scrollTop = box.scrollHeight;
  }

  function renderAudit(data) {
    ui.audit.replaceChildren();
    for (const entry of data.audit || []) {
      const detail = entry.detail && typeof entry.detail === "object"
        ? Object.entries(entry.detail).filter(([, v]) => v !== null && v !== undefined && v !== "")
          .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")
        : "";
      const li = el("li", "", `${when(entry.at)} — ${entry.actor}: ${entry.action}${detail ? ` (${detail})` : ""}`);
      li.dir = "auto";
      ui.audit.appendChild(li);
    }
  }

  function renderActions(data, initial) {
    const closed = data.status === "closed";
    ui.sendReply.disabled = closed;
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
      await api("POST", casePath(ref, path), { ...body, engineer });
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
      () => { ui.reply.value = ""; });
  }

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
    act(`${option.textContent}: recorded; the customer is told.`, "/fulfil",
      { action: option.value, text: ui.fulfilText.value }, () => { ui.fulfilText.value = ""; });
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

  ui.back.addEventListener("click", () => {
    selected = null;
    clearTimeout(caseTimer);
    ui.desk.classList.remove("showing-case");
    history.replaceState(null, "", location.pathname);
    markSelected();
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
