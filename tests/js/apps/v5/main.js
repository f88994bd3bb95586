// AI SDK 5 useChat (@ai-sdk/react 2) as its docs show it: DefaultChatTransport({ api }) on the endpoint
// GET /models advertises, nothing else configured (no protocol, no headers).
import { createElement as h, useState } from "react";
import { createRoot } from "react-dom/client";
import { useChat } from "ai5react";
import { DefaultChatTransport } from "ai5latest";
import { api, ChatView } from "../chat-view.js";

const transport = new DefaultChatTransport({ api: api() });

function App() {
  const [finish, setFinish] = useState(null);
  const { messages, sendMessage, status, error } = useChat({
    transport,
    onFinish: ({ finishReason, isError }) => setFinish(isError ? "error" : String(finishReason)),
  });
  const shown = messages.map((message) => ({
    id: message.id,
    role: message.role,
    text: message.parts.filter((part) => part.type === "text").map((part) => part.text).join(""),
  }));
  return h(ChatView, { sdk: "ai5", messages: shown, status, finish, error, send: (text) => sendMessage({ text }) });
}

createRoot(document.getElementById("root")).render(h(App));
