// Live progress of background jobs on the admin pages.
//
// A container with data-poll="URL" holds elements with data-job="ID" and data-state="STATE".
// While one of them is queued or running, URL?ids=ID,... is fetched about once a second; its
// answer {"jobs": [{id, state, finished, done, total, fraction, note}]} updates each job's
// <progress>, its [data-role=state|text|note|finished] parts, and removes [data-role=cancel] once
// the job has ended. A container with data-reload-when-done reloads the page when its jobs end
// (the page then shows their results). No inline script: the CSP forbids it.

const POLL_MS = 1000;
const FINISHED = new Set(["done", "failed", "cancelled"]);

function formatCount(n) {
  return Number(n).toLocaleString("en-US");
}

function update(element, job) {
  element.dataset.state = job.state;
  const state = element.querySelector("[data-role=state]");
  if (state) {
    state.textContent = job.state;
    state.className = `badge state ${job.state}`;
  }
  const bar = element.querySelector("progress");
  if (bar) {
    if (job.total) {
      bar.max = job.total;
      bar.value = Math.min(job.done, job.total);
    } else if (job.state === "done") {
      bar.max = 1;
      bar.value = 1;
    } else {
      bar.removeAttribute("value"); // unknown total: an indeterminate bar
    }
  }
  const text = element.querySelector("[data-role=text]");
  if (text) {
    if (job.total) {
      const percent = Math.round((job.fraction || 0) * 100);
      text.textContent = `${formatCount(job.done)} / ${formatCount(job.total)} (${percent}%)`;
    } else {
      text.textContent = job.done ? formatCount(job.done) : "";
    }
  }
  const note = element.querySelector("[data-role=note]");
  if (note) note.textContent = job.note || "";
  const finished = element.querySelector("[data-role=finished]");
  if (finished && job.finished_at) {
    finished.textContent = new Date(job.finished_at).toISOString().slice(0, 19).replace("T", " ");
  }
  const cancel = element.querySelector("[data-role=cancel]");
  if (cancel && job.finished) cancel.remove();
}

function active(container) {
  return [...container.querySelectorAll("[data-job]")].filter(
    (element) => !FINISHED.has(element.dataset.state),
  );
}

function say(text) {
  const status = document.getElementById("poll-status");
  if (status) status.textContent = text;
}

async function poll(container) {
  const waiting = active(container);
  if (waiting.length === 0) return;
  const ids = waiting.map((element) => element.dataset.job).join(",");
  let answer;
  try {
    const response = await fetch(`${container.dataset.poll}?ids=${ids}`, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    });
    if (!response.ok) {
      say(`Progress stopped updating (${response.status}): reload the page.`);
      return;
    }
    answer = await response.json();
  } catch {
    // Signed out (the sign-in page is not JSON) or the server is gone: stop quietly.
    say("Progress stopped updating: reload the page.");
    return;
  }
  let ended = false;
  for (const job of answer.jobs || []) {
    const element = container.querySelector(`[data-job="${Number(job.id)}"]`);
    if (!element) continue;
    const wasActive = !FINISHED.has(element.dataset.state);
    update(element, job);
    ended = ended || (wasActive && job.finished);
  }
  say(`Updated ${new Date().toLocaleTimeString()}`);
  if (ended && "reloadWhenDone" in container.dataset && active(container).length === 0) {
    window.location.reload();
    return;
  }
  window.setTimeout(() => poll(container), POLL_MS);
}

for (const container of document.querySelectorAll("[data-poll]")) {
  window.setTimeout(() => poll(container), POLL_MS);
}
