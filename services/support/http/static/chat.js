// The chat page: streams each reply from /v1/chat/completions (server-sent events), shows the version that
// wrote it (the llmk-version header), and sends a thumb or a better reply to /v1/feedback.
"use strict";

const history = [];
const log = document.getElementById("log");
const statusLine = document.getElementById("status");

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = localStorage.getItem("llmkToken");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function modelName() {
  const answer = await fetch("/v1/models", { headers: headers() });
  if (!answer.ok) throw new Error((await answer.json()).error.message);
  return (await answer.json()).data[0].id;
}

function addCustomerTurn(text) {
  const div = document.createElement("div");
  div.className = "turn customer";
  div.textContent = text;
  log.appendChild(div);
}

// Each SSE event is "data: <json>" lines separated by a blank line; yields the parsed payloads.
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function ask(text) {
  addCustomerTurn(text);
  history.push({ role: "user", content: text });
  const turn = document.getElementById("reply-template").content.firstElementChild.cloneNode(true);
  log.appendChild(turn);
  const reply = turn.querySelector(".text");
  const request = { model: await modelName(), messages: history, stream: true };
  const answer = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(request) });
  if (!answer.ok) throw new Error((await answer.json()).error.message);
  turn.querySelector(".version").textContent = answer.headers.get("llmk-version");
  let id = "";
  for await (const chunk of events(answer.body)) {
    if (chunk.error) throw new Error(chunk.error.message);
    id = chunk.id;
    const delta = chunk.choices.length ? chunk.choices[0].delta : {};
    if (delta.content) reply.textContent += delta.content;
  }
  history.push({ role: "assistant", content: reply.textContent });
  turn.dataset.completionId = id;
  enableFeedback(turn, id);
}

function enableFeedback(turn, id) {
  const up = turn.querySelector(".up"), down = turn.querySelector(".down");
  const correction = turn.querySelector(".correction"), sendCorrection = turn.querySelector(".send-correction");
  const shown = turn.querySelector(".feedback-status");
  const buttons = [up, down, sendCorrection];
  async function send(rating, button) {
    buttons.forEach((b) => (b.disabled = true));
    const body = { id, rating };
    if (correction.value.trim()) body.correction = correction.value;
    const answer = await fetch("/v1/feedback", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const result = await answer.json();
    if (answer.ok) {
      button.setAttribute("aria-pressed", "true");
      shown.textContent = "Thank you: feedback stored";
    } else {
      shown.textContent = result.error.message;
      shown.classList.add("error");
    }
  }
  up.onclick = () => send("up", up);
  down.onclick = () => send("down", down);
  sendCorrection.onclick = () => send("down", down);
  buttons.forEach((b) => (b.disabled = false));
}

document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("message");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  statusLine.textContent = "answering…";
  statusLine.classList.remove("error");
  try {
    await ask(text);
    statusLine.textContent = "";
  } catch (error) {
    statusLine.textContent = error.message;
    statusLine.classList.add("error");
  }
});
