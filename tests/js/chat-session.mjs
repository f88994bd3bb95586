// Drive a whole conversation with AI SDK 5's own Chat (the class behind @ai-sdk/react useChat), the way
// a front-end does: send, send again (the SDK posts back its own assistant messages), regenerate.
//
//   node chat-session.mjs URL STEPS_JSON
//
// STEPS_JSON: a list of {"send": "text"}, {"send": "text", "files": [{"mediaType", "url"}]},
// {"regenerate": true} or {"continue": true} (sendMessage() without a message: the reply continues the
// last assistant message, e.g. after a finish for length). Prints one JSON summary on stdout: for every step the body the SDK posted, the
// status it ended in, its error (if any) and the messages as the SDK holds them afterwards.
import { Chat } from "ai5react";
import { DefaultChatTransport } from "ai5latest";

const [url, stepsJson] = process.argv.slice(2);
if (!url || !stepsJson) {
  console.error("usage: node chat-session.mjs URL STEPS_JSON");
  process.exit(2);
}
let lastBody = null;
const transport = new DefaultChatTransport({
  api: url,
  fetch: (input, init) => {
    lastBody = JSON.parse(init.body);
    return fetch(input, init);
  },
});
let finishes = [];
const chat = new Chat({ transport, onFinish: (event) => finishes.push(event.finishReason ?? null), onError: () => {} });
const steps = [];
for (const step of JSON.parse(stepsJson)) {
  lastBody = null;
  finishes = [];
  if (step.regenerate) {
    await chat.regenerate();
  } else if (step.continue) {
    await chat.sendMessage();
  } else {
    const files = (step.files ?? []).map((file) => ({ type: "file", ...file }));
    await chat.sendMessage(files.length ? { text: step.send, files } : { text: step.send });
  }
  steps.push({
    body: lastBody,
    status: chat.status,
    error: chat.error?.message ?? null,
    finishes,
    messages: JSON.parse(JSON.stringify(chat.messages)),
  });
}
console.log(JSON.stringify({ steps }));
