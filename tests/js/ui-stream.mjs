// Read a modelgate chat reply with the AI SDK 5 UI message stream client, the way useChat does.
//
//   node ui-stream.mjs SDK URL [JSON_BODY]
//
// SDK: ai5 (= ai@5.0.0, strict chunk schemas), ai5latest (a current 5.x), ai6 or ai7 (current 6.x, 7.x).
//
// Sends the request through DefaultChatTransport (the v5 useChat default: POST, SSE, every chunk
// validated against uiMessageChunkSchema), then assembles the message with readUIMessageStream.
// Prints one JSON summary on stdout; exits 1 on any protocol violation (schema, ordering, framing),
// with the reason on stderr. A non-2xx answer is not a violation: the summary holds its status and body.
const [sdkName, url, body = '{"messages":[{"role":"user","content":"hi"}]}'] = process.argv.slice(2);
if (!["ai5", "ai5latest", "ai6", "ai7"].includes(sdkName) || !url) {
  console.error("usage: node ui-stream.mjs ai5|ai5latest|ai6|ai7 URL [JSON_BODY]");
  process.exit(2);
}
const { DefaultChatTransport, readUIMessageStream } = await import(sdkName);

function fail(reason) {
  console.error(`UI message stream protocol violation (${sdkName}): ${reason}`);
  process.exit(1);
}

const summary = { sdk: sdkName };
let rawBody = null;
// The transport's own fetch, wrapped only to see the status, headers and raw bytes it reads.
async function observingFetch(input, init) {
  const response = await fetch(input, init);
  summary.status = response.status;
  summary.headers = Object.fromEntries(response.headers);
  if (!response.ok || !response.body) return response;
  const [forClient, forRaw] = response.body.tee();
  rawBody = new Response(forRaw).text();
  return new Response(forClient, { status: response.status, headers: response.headers });
}

const { messages = [], ...extra } = JSON.parse(body);
const transport = new DefaultChatTransport({ api: url, body: extra, fetch: observingFetch });
let stream;
try {
  stream = await transport.sendMessages({
    chatId: "chat-test",
    messages,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
} catch (error) {
  if (summary.status !== undefined && summary.status >= 400) {
    summary.body = error.message; // what useChat shows for a non-2xx answer
    console.log(JSON.stringify(summary));
    process.exit(0);
  }
  fail(`request failed: ${error.message}`);
}

const chunks = [];
try {
  for await (const chunk of stream) chunks.push(chunk);
} catch (error) {
  fail(`chunk rejected: ${error.message}`);
}

// Assemble the message as useChat does; errors it reports other than the stream's own error chunks
// (e.g. a delta for a part that was never started) are violations.
const streamErrors = chunks.filter((chunk) => chunk.type === "error").map((chunk) => chunk.errorText);
const reported = [];
let message = null;
const replay = new ReadableStream({
  start(controller) {
    for (const chunk of chunks) controller.enqueue(chunk);
    controller.close();
  },
});
for await (const snapshot of readUIMessageStream({ stream: replay, onError: (error) => reported.push(error.message) })) {
  message = snapshot;
}
const unexpected = reported.filter((text) => !streamErrors.includes(text));
if (unexpected.length > 0) fail(`client could not apply the chunks: ${unexpected.join("; ")}`);

const raw = await rawBody;
if (!raw.endsWith("data: [DONE]\n\n")) fail("the stream does not end with data: [DONE]");
for (const event of raw.split("\n\n").slice(0, -1)) {
  if (!event.startsWith("data: ") || event.includes("\n")) fail(`not a single data line: ${JSON.stringify(event)}`);
}

const parts = message?.parts ?? [];
const joined = (type) => parts.filter((part) => part.type === type).map((part) => part.text).join("");
Object.assign(summary, {
  chunkTypes: chunks.map((chunk) => chunk.type),
  chunks,
  errors: streamErrors,
  finish: chunks.filter((chunk) => chunk.type === "finish").at(-1) ?? null,
  message: message && {
    id: message.id,
    role: message.role,
    metadata: message.metadata ?? null,
    partTypes: parts.map((part) => part.type),
  },
  text: joined("text"),
  reasoning: joined("reasoning"),
  raw,
});
console.log(JSON.stringify(summary));
