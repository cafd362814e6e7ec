// The desk's report page: the figures (server-rendered HTML with inline SVG charts) and the CSV, fetched
// from /api/desk/report with the desk's token (signed in on /desk; the same tab keeps it).
(() => {
  "use strict";

  const TOKEN_KEY = "warranty.desk.token"; // as the desk page stores it (sessionStorage)
  const $ = (id) => document.getElementById(id);
  const ui = { notice: $("notice"), main: $("report-main"), form: $("period"), from: $("from"), to: $("to"),
               csv: $("csv"), report: $("report") };
  const token = sessionStorage.getItem(TOKEN_KEY) || "";

  function notice(text, isError) {
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
    ui.notice.classList.toggle("error", Boolean(isError));
  }

  function iso(day) {
    return day.toISOString().slice(0, 10);
  }

  function query() {
    const params = new URLSearchParams();
    if (ui.from.value) params.set("from", ui.from.value);
    if (ui.to.value) params.set("to", ui.to.value);
    return params.toString();
  }

  async function fetchWithToken(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (response.ok) return response;
    let message = response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (error) {
      // not JSON: keep the status text
    }
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      throw new Error(`The desk token was not accepted: sign in again on the desk. (${message})`);
    }
    throw new Error(message);
  }

  async function load() {
    ui.report.setAttribute("aria-busy", "true");
    const params = query();
    history.replaceState(null, "", `/desk/report?${params}`);
    try {
      const response = await fetchWithToken(`/api/desk/report.html?${params}`);
      // Our server's HTML, every value escaped there: parsed as a document, never run (no scripts in it).
      const parsed = new DOMParser().parseFromString(await response.text(), "text/html");
      ui.report.replaceChildren(...parsed.body.childNodes);
      notice("");
    } catch (error) {
      notice(error.message, true);
    } finally {
      ui.report.setAttribute("aria-busy", "false");
    }
  }

  async function downloadCsv(event) {
    event.preventDefault();
    try {
      const response = await fetchWithToken(`/api/desk/report.csv?${query()}`);
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = `warranty-report-${ui.from.value}-${ui.to.value}.csv`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (error) {
      notice(error.message, true);
    }
  }

  if (!token) {
    notice("Sign in on the desk first: the report uses the desk's token.", true);
    const link = document.createElement("a");
    link.href = "/desk";
    link.textContent = " Open the desk";
    ui.notice.append(link);
    return;
  }
  const given = new URLSearchParams(location.search);
  const today = new Date();
  ui.to.value = given.get("to") || iso(today);
  ui.from.value = given.get("from") || `${ui.to.value.slice(0, 8)}01`;
  ui.main.hidden = false;
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  ui.csv.addEventListener("click", downloadCsv);
  load();
})();
