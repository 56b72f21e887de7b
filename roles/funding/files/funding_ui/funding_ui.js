// The live page: one EventSource on /funding/stream, rows updated in place, DOM writes batched per animation frame.
"use strict";

(function () {
  const COLUMNS = ["symbol", "markPrice", "fundingRate", "fundingRateAnnualized", "fundingIntervalHours", "capUsage",
    "updatedAt"];
  const HEALTH_POLL_MS = 5000;
  const RESORT_MS = 1000;

  const tbody = document.querySelector("#funding tbody");
  const headers = Array.from(document.querySelectorAll("#funding th"));
  const filterInput = document.getElementById("filter");
  const banner = document.getElementById("banner");
  const rows = new Map(); // symbol -> {record, tr, cells, shown}
  const dirty = new Set();
  let health = null;
  let staleSeconds = 180;
  let sortKey = "symbol";
  let sortDirection = 1;
  let sortNeeded = true;
  let lastSort = 0;
  let frameRequested = false;
  let filterText = "";

  function text(id, value, className) {
    const element = document.getElementById(id);
    element.textContent = value;
    if (className !== undefined) element.className = className;
  }

  function number(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
  }

  function percent(value, digits) {
    return typeof value === "number" && isFinite(value) ? (value * 100).toFixed(digits) + " %" : "–";
  }

  function price(value) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    const magnitude = Math.abs(value);
    return value.toFixed(magnitude >= 1000 ? 2 : magnitude >= 1 ? 4 : 6);
  }

  function ageOf(record, now) {
    return typeof record.updatedAt === "number" ? Math.max(0, now - record.updatedAt) : Infinity;
  }

  function formatCell(key, record, now) {
    switch (key) {
      case "symbol": return record.symbol;
      case "markPrice": return price(record.markPrice);
      case "fundingRate": return percent(record.fundingRate, 4);
      case "fundingRateAnnualized": return percent(record.fundingRateAnnualized, 2);
      case "fundingIntervalHours": return typeof record.fundingIntervalHours === "number" ? record.fundingIntervalHours + " h" : "–";
      case "capUsage": return percent(record.capUsage, 1);
      case "updatedAt": return number(ageOf(record, now), 1) + " s";
      default: return "";
    }
  }

  function sortValue(record, key, now) {
    if (key === "updatedAt") return ageOf(record, now);
    const value = record[key];
    return value === undefined ? null : value;
  }

  function compare(a, b) {
    const now = Date.now() / 1000;
    const x = sortValue(a.record, sortKey, now);
    const y = sortValue(b.record, sortKey, now);
    if (x === y) return a.record.symbol < b.record.symbol ? -1 : 1;
    if (x === null) return 1; // missing values last in both directions
    if (y === null) return -1;
    return (x < y ? -1 : 1) * sortDirection;
  }

  function matchesFilter(symbol) {
    return !filterText || symbol.indexOf(filterText) !== -1;
  }

  function upsert(record) {
    let row = rows.get(record.symbol);
    if (!row) {
      const tr = document.createElement("tr");
      tr.dataset.symbol = record.symbol;
      const cells = {};
      for (const key of COLUMNS) {
        const td = document.createElement("td");
        td.className = key;
        tr.appendChild(td);
        cells[key] = td;
      }
      row = {record, tr, cells, shown: {}};
      rows.set(record.symbol, row);
      sortNeeded = true;
    } else {
      if (row.record[sortKey] !== record[sortKey]) sortNeeded = true;
      row.record = record;
    }
    dirty.add(row);
  }

  function remove(symbol) {
    const row = rows.get(symbol);
    if (!row) return;
    rows.delete(symbol);
    dirty.delete(row);
    row.tr.remove();
  }

  function render(row, now) {
    const record = row.record;
    for (const key of COLUMNS) {
      const value = formatCell(key, record, now);
      if (row.shown[key] !== value) {
        row.cells[key].textContent = value;
        row.shown[key] = value;
      }
    }
    const rate = record.fundingRate;
    const rateClass = "fundingRate" + (rate > 0 ? " positive" : rate < 0 ? " negative" : "");
    if (row.cells.fundingRate.className !== rateClass) row.cells.fundingRate.className = rateClass;
    // For scripts and tests: the values behind the formatted cells.
    const updatedAt = String(record.updatedAt);
    if (row.tr.dataset.updatedAt !== updatedAt) row.tr.dataset.updatedAt = updatedAt;
    const rateText = String(rate);
    if (row.tr.dataset.rate !== rateText) row.tr.dataset.rate = rateText;
    row.tr.classList.toggle("stale", ageOf(record, now) > staleSeconds);
    row.tr.classList.toggle("hidden", !matchesFilter(record.symbol));
  }

  function scheduleFrame() {
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(frame);
    }
  }

  function frame() {
    frameRequested = false;
    const now = Date.now() / 1000;
    for (const row of dirty) render(row, now);
    dirty.clear();
    const due = performance.now() - lastSort >= RESORT_MS || sortKey === "symbol";
    if (sortNeeded && due) {
      const ordered = Array.from(rows.values()).sort(compare);
      const fragment = document.createDocumentFragment();
      for (const row of ordered) fragment.appendChild(row.tr);
      tbody.appendChild(fragment);
      sortNeeded = false;
      lastSort = performance.now();
    } else if (sortNeeded) {
      setTimeout(scheduleFrame, RESORT_MS);
    }
    let shown = 0;
    for (const row of rows.values()) if (matchesFilter(row.record.symbol)) shown += 1;
    text("row-count", String(shown));
  }

  function tick() {
    // Ages move with the clock: every row once a second, written only where the text changes.
    for (const row of rows.values()) dirty.add(row);
    if (sortKey === "updatedAt") sortNeeded = true;
    scheduleFrame();
  }

  function showHealth(body) {
    health = body;
    if (typeof body.staleThresholdSeconds === "number") staleSeconds = body.staleThresholdSeconds;
    const status = body.status || "unknown";
    text("health-status", status, "status-" + status);
    text("health-symbols", typeof body.symbolCount === "number" ? String(body.symbolCount) : "–");
    text("newest-age", typeof body.newestDataAgeSeconds === "number" ? body.newestDataAgeSeconds.toFixed(1) + " s" : "–");
    // Coverage of the contract universe, when the API reports it (expectedSymbolCount is null while it is unknown).
    if (typeof body.expectedSymbolCount === "number" && body.expectedSymbolCount > 0) {
      const served = typeof body.symbolCount === "number" ? body.symbolCount : 0;
      const missing = typeof body.missingSymbolCount === "number" ? body.missingSymbolCount : 0;
      text("coverage", (100 * Math.min(1, served / body.expectedSymbolCount)).toFixed(1) + " % of " +
        body.expectedSymbolCount + (missing ? " (" + missing + " missing)" : ""));
    } else if (body.universeKnown === false) {
      text("coverage", "universe not known yet");
    }
    if (status === "healthy") {
      banner.hidden = true;
    } else {
      banner.textContent = "Service " + status + ": " + (body.reasons || []).join("; ");
      banner.hidden = false;
    }
    for (const row of rows.values()) dirty.add(row);
    scheduleFrame();
  }

  function pollHealth() {
    fetch("/funding/health", {cache: "no-store"})
      .then((response) => response.json())
      .then(showHealth)
      .catch(() => text("health-status", "unreachable", "status-offline"));
  }

  function connect() {
    const source = new EventSource("/funding/stream");
    source.addEventListener("open", () => text("stream-status", "live", "status-healthy"));
    source.addEventListener("error", () => text("stream-status", "reconnecting…", "status-offline"));
    source.addEventListener("snapshot", (event) => {
      const body = JSON.parse(event.data);
      const present = new Set();
      for (const record of body.data) {
        upsert(record);
        present.add(record.symbol);
      }
      for (const symbol of Array.from(rows.keys())) if (!present.has(symbol)) remove(symbol);
      if (body.health) showHealth(body.health);
      scheduleFrame();
    });
    source.addEventListener("update", (event) => {
      const body = JSON.parse(event.data);
      for (const record of body.data) upsert(record);
      for (const symbol of body.removed || []) remove(symbol);
      scheduleFrame();
    });
    source.addEventListener("health", (event) => showHealth(JSON.parse(event.data)));
  }

  for (const th of headers) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      sortDirection = key === sortKey ? -sortDirection : 1;
      sortKey = key;
      for (const other of headers) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", sortDirection === 1 ? "ascending" : "descending");
      sortNeeded = true;
      lastSort = 0;
      scheduleFrame();
    });
  }
  filterInput.addEventListener("input", () => {
    filterText = filterInput.value.trim().toUpperCase();
    for (const row of rows.values()) dirty.add(row);
    scheduleFrame();
  });

  connect();
  pollHealth();
  setInterval(pollHealth, HEALTH_POLL_MS);
  setInterval(tick, 1000);
})();
