// pitrsite dashboard: live parts without reloading. Plain JS, no dependencies.
"use strict";

// Re-fetch this page and swap every [data-live-block] element with its fresh copy.
async function refreshBlocks() {
  const response = await fetch(location.href, {headers: {"X-Requested-With": "fetch"}, credentials: "same-origin"});
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  document.querySelectorAll("[data-live-block][id]").forEach((block) => {
    if (block.contains(document.activeElement) && document.activeElement !== document.body) return;  // user is typing
    const next = fresh.getElementById(block.id);
    if (next) block.innerHTML = next.innerHTML;
  });
}

function formatBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function formatSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 90) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function formatQuantity(n, unit) {
  if (unit === "bytes") return formatBytes(n);
  if (unit === "seconds") return formatSeconds(n);
  return String(n);
}

// "8 s of 30 s", "2 of 5 moments": the current step's progress in the unit it counts.
function progressText(job) {
  if (!job.progress_total) return "";
  const unit = job.progress_unit || "bytes";
  const text = formatQuantity(job.progress_done || 0, unit) + " of " + formatQuantity(job.progress_total, unit);
  return unit === "bytes" || unit === "seconds" ? text : text + " " + unit;
}

function setBar(id, percent, state) {
  const bar = document.getElementById(id);
  if (!bar) return;
  bar.dataset.state = state;
  bar.classList.toggle("indeterminate", percent === null && state === "running");
  bar.firstElementChild.style.width = (percent === null ? 0 : percent) + "%";
  if (percent !== null) bar.setAttribute("aria-valuenow", Math.round(percent));
}

function setText(id, text) {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
}

function renderSteps(list, job) {
  const expected = (list.dataset.expected || "").split("|").filter(Boolean);
  // "restoring T…" stands for every "restoring T 2/5" step.
  const started = (name) => job.steps.some((s) => name.endsWith("…") ? s.name.startsWith(name.slice(0, -1)) : s.name === name);
  list.replaceChildren();
  job.steps.forEach((step) => {
    const li = document.createElement("li");
    const running = step.seconds === null && job.active;
    li.className = running ? "current" : "done";
    li.textContent = step.name + " ";
    const span = document.createElement("span");
    span.className = "muted";
    span.textContent = running ? "" : formatSeconds(step.seconds);
    li.append(span);
    list.append(li);
  });
  if (job.active) {
    expected.filter((name) => !started(name)).forEach((name) => {
      const li = document.createElement("li");
      li.className = "pending";
      li.textContent = name;
      list.append(li);
    });
  }
}

function renderJob(root, job) {
  root.dataset.state = job.state;
  // "queued" was true when the page was made; once the job runs or ends it no longer is.
  if (job.state !== "queued") document.querySelectorAll(".messages li.queued").forEach((li) => li.remove());
  const state = document.getElementById("job-state");
  state.textContent = job.state;
  state.className = "state state-" + job.state;
  setText("job-step", job.current_step || "—");
  setText("job-duration", formatSeconds(job.duration));
  // The overall bar only grows: a late poll answered out of order must not pull it back either.
  const bar = document.getElementById("job-bar");
  const previous = parseFloat(bar.getAttribute("aria-valuenow") || "0");
  const overall = job.overall_percent === null ? null : (job.state === "running" ? Math.max(previous, job.overall_percent) : job.overall_percent);
  setBar("job-bar", overall, job.state);
  setBar("step-bar", job.percent, job.state);
  setText("job-progress", progressText(job));
  if (job.kind === "chaos") {
    const verdict = document.getElementById("verdict");
    if (verdict) {
      verdict.textContent = job.verdict ? job.verdict[0].toUpperCase() + job.verdict.slice(1) : (job.active ? "running" : job.state);
      verdict.className = "verdict verdict-" + (job.verdict || "");
    }
  }
  if (job.kind === "restore") {
    setText("job-replay-lsn", job.replay_lsn || "—");
    setText("job-target-lsn", job.target_lsn || "—");
  }
  const steps = document.getElementById("job-steps");
  if (steps) renderSteps(steps, job);
  const error = document.getElementById("job-error");
  error.textContent = job.error;
  error.hidden = !job.error;
}

function followJob(root) {
  let ticks = 0;
  const tick = async () => {
    let job;
    try {
      const response = await fetch(root.dataset.json, {credentials: "same-origin"});
      if (!response.ok) throw new Error(response.status);
      job = await response.json();
    } catch (e) {
      setTimeout(tick, 3000);  // server restarting: keep trying, the row holds the truth
      return;
    }
    renderJob(root, job);
    ticks++;
    if (job.active) {
      // Facts that grow while the job runs (a chaos run's writes, actions, verifications; a restore's plan).
      if (ticks % 3 === 0) refreshBlocks().catch(() => {});
      setTimeout(tick, 1000);
    } else refreshBlocks();  // final facts (promoted at, sizes) come from the server-rendered page
  };
  if (root.dataset.state === "queued" || root.dataset.state === "running") tick();
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job-live");
  if (job) followJob(job);
  const auto = document.querySelector("[data-refresh]");
  if (auto) setInterval(() => refreshBlocks().catch(() => {}), parseInt(auto.dataset.refresh, 10));
});

// A copy button beside each connection line.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("code.copy").forEach((code) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link copy-button";
    button.textContent = "copy";
    button.addEventListener("click", () => navigator.clipboard.writeText(code.textContent).then(() => { button.textContent = "copied"; }));
    code.after(" ", button);
  });
});

// WAL timeline: wheel zooms around the pointer, drag pans, a click opens the restore form at that moment.
function timelineMoment(svg, event) {
  const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse());
  const share = (point.x - parseFloat(svg.dataset.left)) / parseFloat(svg.dataset.plotWidth);
  if (share < 0 || share > 1) return null;
  const start = parseFloat(svg.dataset.start), end = parseFloat(svg.dataset.end);
  return new Date((start + share * (end - start)) * 1000);
}

function displayedUtc(date) {
  return date.toISOString().slice(0, 19).replace("T", " ") + " UTC";  // the form reads this format back
}

function followTimeline(svg) {
  const full = svg.viewBox.baseVal.width;
  let dragFrom = null, moved = false;
  // Zooming narrows the viewBox in x only: fix the drawn height and let x stretch.
  const unlock = () => {
    if (svg.getAttribute("preserveAspectRatio") === "none") return;
    svg.style.height = svg.getBoundingClientRect().height + "px";
    svg.setAttribute("preserveAspectRatio", "none");
  };
  svg.addEventListener("wheel", (event) => {
    event.preventDefault();
    unlock();
    const box = svg.viewBox.baseVal;
    const at = new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse()).x;
    const width = Math.min(full, Math.max(full / 64, box.width * (event.deltaY < 0 ? 0.8 : 1.25)));
    box.x = Math.min(full - width, Math.max(0, at - (at - box.x) * width / box.width));
    box.width = width;
  }, {passive: false});
  svg.addEventListener("pointerdown", (event) => { dragFrom = event.clientX; moved = false; });
  svg.addEventListener("pointermove", (event) => {
    if (dragFrom === null) return;
    const box = svg.viewBox.baseVal;
    const dx = (event.clientX - dragFrom) * box.width / svg.getBoundingClientRect().width;
    if (Math.abs(event.clientX - dragFrom) > 3) moved = true;
    box.x = Math.min(full - box.width, Math.max(0, box.x - dx));
    dragFrom = event.clientX;
  });
  svg.addEventListener("pointerup", (event) => {
    const wasDrag = moved;
    dragFrom = null;
    if (wasDrag) return;
    const moment = timelineMoment(svg, event);
    if (!moment) return;
    const target = svg.dataset.restoreUrl || "/restores/new/";
    location.href = target + "?kind=time&value=" + encodeURIComponent(displayedUtc(moment));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("svg.timeline[data-start]").forEach(followTimeline);
});

// The restore form's date-time picker: choosing a time makes it the target.
document.addEventListener("DOMContentLoaded", () => {
  const picker = document.getElementById("id_picked");
  if (!picker) return;
  picker.addEventListener("change", () => {
    const value = document.getElementById("id_value");
    if (value) value.value = "";
    const time = document.querySelector("input[name=kind][value=time]");
    if (time) time.checked = true;
  });
});
