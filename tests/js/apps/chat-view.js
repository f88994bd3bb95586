// The page both apps render: the messages, the chat status, what onFinish saw, the error, a form.
// Only what the tests read carries an id or a data- attribute.
import { createElement as h, useState } from "react";

export function api() {
  const value = new URLSearchParams(window.location.search).get("api");
  if (!value) throw new Error("open this page with ?api=<modelgate chat endpoint>");
  return value;
}

// messages: [{ id, role, text }]; finish: what onFinish reported, or null; error: an Error or undefined.
export function ChatView({ sdk, messages, status, finish, error, send }) {
  const [input, setInput] = useState("");
  const submit = (event) => {
    event.preventDefault();
    if (!input.trim()) return;
    send(input);
    setInput("");
  };
  return h(
    "main",
    { "data-sdk": sdk },
    h(
      "ol",
      { id: "messages" },
      messages.map((message) => h("li", { key: message.id, "data-role": message.role }, message.text)),
    ),
    h("p", { id: "status" }, status),
    finish && h("p", { id: "finish" }, finish),
    error && h("p", { id: "error", role: "alert" }, error.message),
    h(
      "form",
      { onSubmit: submit },
      h("input", { id: "prompt", value: input, onChange: (event) => setInput(event.target.value) }),
      h("button", { type: "submit" }, "Send"),
    ),
  );
}
