// AI SDK 4 useChat (`ai/react` of ai@4, i.e. @ai-sdk/react 1) as its docs show it: useChat({ api }) on the
// endpoint GET /models advertises, nothing else configured (the default data stream protocol).
import { createElement as h, useState } from "react";
import { createRoot } from "react-dom/client";
import { useChat } from "ai/react";
import { api, ChatView } from "../chat-view.js";

function App() {
  const [finish, setFinish] = useState(null);
  const { messages, append, status, error } = useChat({
    api: api(),
    onFinish: (message, { finishReason }) => setFinish(String(finishReason)),
  });
  const shown = messages.map((message) => ({ id: message.id, role: message.role, text: message.content }));
  return h(ChatView, { sdk: "ai4", messages: shown, status, finish, error, send: (text) => append({ role: "user", content: text }) });
}

createRoot(document.getElementById("root")).render(h(App));
