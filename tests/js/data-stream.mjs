// Read a modelgate chat reply with the AI SDK 4 data stream parsers (ai@4.3.19), the way useChat does.
//
//   node data-stream.mjs URL [JSON_BODY]
//
// Sends JSON_BODY through callChatApi (the request/response path of useChat in @ai-sdk/ui-utils 1.x:
// POST, non-2xx handling, processChatResponse building the assistant message; an error part throws as
// it does in the browser). The same bytes also go through processDataStream with a callback for every
// part type, so every part is recorded and parsed strictly (unknown code or bad JSON rejects).
// Prints one JSON summary on stdout; exits 1 on any protocol violation, with the reason on stderr.
// A non-2xx answer is not a violation: the summary holds its status and body, as useChat would show them.
import { processDataStream } from "ai";
import { callChatApi } from "@ai-sdk/ui-utils";

const [url, body = '{"messages":[{"role":"user","content":"hi"}]}'] = process.argv.slice(2);
if (!url) {
  console.error("usage: node data-stream.mjs URL [JSON_BODY]");
  process.exit(2);
}

function fail(reason) {
  console.error(`data stream protocol violation: ${reason}`);
  process.exit(1);
}

const summary = {};
const parts = [];
const record = (type) => (value) => {
  parts.push({ type, value });
};
let readParts = Promise.resolve();
let readRaw = Promise.resolve("");

// useChat's own fetch, wrapped only to see the status and headers and to give the strict part
// parser and the framing checks their own copy of the bytes.
async function observingFetch(input, init) {
  const response = await fetch(input, init);
  summary.status = response.status;
  summary.headers = Object.fromEntries(response.headers);
  if (!response.ok || !response.body) return response;
  const [forChat, rest] = response.body.tee();
  const [forParts, forRaw] = rest.tee();
  readParts = processDataStream({
    stream: forParts,
    onTextPart: record("text"),
    onReasoningPart: record("reasoning"),
    onReasoningSignaturePart: record("reasoning_signature"),
    onRedactedReasoningPart: record("redacted_reasoning"),
    onSourcePart: record("source"),
    onFilePart: record("file"),
    onDataPart: record("data"),
    onErrorPart: record("error"),
    onToolCallStreamingStartPart: record("tool_call_streaming_start"),
    onToolCallDeltaPart: record("tool_call_delta"),
    onToolCallPart: record("tool_call"),
    onToolResultPart: record("tool_result"),
    onMessageAnnotationsPart: record("message_annotations"),
    onFinishMessagePart: record("finish_message"),
    onFinishStepPart: record("finish_step"),
    onStartStepPart: record("start_step"),
  });
  readRaw = new Response(forRaw).text();
  return new Response(forChat, { status: response.status, headers: response.headers });
}

let chatMessage = null;
let chatFinish = null;
let chatError = null;
try {
  await callChatApi({
    api: url,
    body: JSON.parse(body),
    streamProtocol: "data",
    credentials: undefined,
    headers: undefined,
    abortController: () => null,
    restoreMessagesOnFailure: () => {},
    onResponse: undefined,
    onUpdate: ({ message }) => {
      chatMessage = message;
    },
    onFinish: (message, { finishReason, usage }) => {
      chatMessage = message;
      chatFinish = { finishReason, usage };
    },
    onToolCall: undefined,
    generateId: () => "generated-id",
    fetch: observingFetch,
    lastMessage: undefined,
  });
} catch (error) {
  chatError = error.message; // what useChat reports through onError / `error`
}

if (summary.status === undefined) fail(`request failed: ${chatError}`);
if (summary.status >= 400) {
  summary.body = chatError; // callChatApi throws the response text for a non-2xx answer
  console.log(JSON.stringify(summary));
  process.exit(0);
}

let raw;
try {
  [, raw] = await Promise.all([readParts, readRaw]);
} catch (error) {
  fail(error.message);
}
if (raw.includes("\r")) fail("carriage return in the body (parts end with \\n only)");
if (raw.length > 0 && !raw.endsWith("\n")) fail("the body does not end with a complete part");
if (raw.split("\n").slice(0, -1).includes("")) fail("empty line in the body");
const errorParts = parts.filter((part) => part.type === "error").map((part) => part.value);
if (chatError !== null && !errorParts.includes(chatError)) fail(`useChat failed: ${chatError}`);

const of = (type) => parts.filter((part) => part.type === type).map((part) => part.value);
const last = (type) => of(type).at(-1) ?? null;
Object.assign(summary, {
  text: of("text").join(""),
  reasoning: of("reasoning").join(""),
  errors: errorParts,
  startStep: last("start_step"),
  finishStep: last("finish_step"),
  finishMessage: last("finish_message"),
  annotations: of("message_annotations").flat(),
  partTypes: parts.map((part) => part.type),
  useChat: {
    error: chatError,
    finish: chatFinish,
    message: chatMessage && {
      id: chatMessage.id,
      role: chatMessage.role,
      content: chatMessage.content,
      reasoning: chatMessage.reasoning ?? null,
      annotations: chatMessage.annotations ?? [],
      partTypes: (chatMessage.parts ?? []).map((part) => part.type),
    },
  },
  raw,
});
console.log(JSON.stringify(summary));
