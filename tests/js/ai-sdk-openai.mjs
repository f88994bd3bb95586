// Call modelgate's /v1 with the AI SDK core and an OpenAI provider, unchanged:
//
//   node ai-sdk-openai.mjs SDK BASE_URL MODEL MODE [JSON_OPTIONS]
//
// SDK: v7 (ai@7 + @ai-sdk/openai@4, current) or v5 (ai@5 + @ai-sdk/openai@2, AI SDK 5): the provider's default
// model, createOpenAI({ baseURL })(modelId), speaks the Responses API (/v1/responses);
// compatible (ai@7 + @ai-sdk/openai-compatible@3): createOpenAICompatible({ name, baseURL, includeUsage: true })
// (modelId) speaks Chat Completions (/v1/chat/completions), as Cline's SDK creates it for an OpenAI-compatible
// provider; structured output as json_object (supportsStructuredOutputs unset, the package's default).
// MODE: generate (generateText), stream (streamText, reading fullStream), or two-turn (generateText, then
// generateText again with the first answer's response.messages appended, as an app's chat history does);
// tools / tools-stream: generateText / streamText with one tool (tool({ inputSchema: z.object(...) })) that the
// SDK runs, then calls the model again with its result (stopWhen: stepCountIs(2)), as an agent loop does;
// object: generateText with Output.object({ schema }) (structured output: text.format json_schema);
// image: generateText with an image part (PNG bytes, sent as an input_image data: URL).
// JSON_OPTIONS: merged into the call's options (e.g. {"providerOptions": {"openai": {"store": false}}}).
// Prints one JSON summary on stdout: text, reasoning, finishReason, usage, the stream's part types and
// errors; a rejected call is reported in the summary (error: name, message, statusCode, responseBody),
// not as a crash, so the Python test can assert on it.
const [sdkName, baseURL, modelId, mode, optionsJson = "{}"] = process.argv.slice(2);
const SDKS = {
  v7: ["ai7", async () => (await import("@ai-sdk/openai")).createOpenAI({ baseURL, apiKey: "test-key" })],
  v5: ["ai5latest", async () => (await import("ai-sdk-openai-v2")).createOpenAI({ baseURL, apiKey: "test-key" })],
  compatible: [
    "ai7",
    async () =>
      (await import("@ai-sdk/openai-compatible")).createOpenAICompatible({
        name: "modelgate",
        baseURL,
        apiKey: "test-key",
        includeUsage: true,
      }),
  ],
};
const MODES = ["generate", "stream", "two-turn", "tools", "tools-stream", "object", "image"];
if (!SDKS[sdkName] || !baseURL || !modelId || !MODES.includes(mode)) {
  console.error(`usage: node ai-sdk-openai.mjs ${Object.keys(SDKS).join("|")} BASE_URL MODEL ${MODES.join("|")} [JSON_OPTIONS]`);
  process.exit(2);
}
const [aiPackage, createProvider] = SDKS[sdkName];
const { generateText, streamText, tool, stepCountIs, Output } = await import(aiPackage);
// zod 4's API (both SDKs take it); the package also serves AI SDK 4's zod 3 peer.
const { z } = await import("zod/v4");

const provider = await createProvider();
const model = provider(modelId);
const extra = JSON.parse(optionsJson);
const base = { model, maxRetries: 0, ...extra };

function describeError(error) {
  // AI SDK 5 passes the stream's error chunk itself ({ type: "error", error: {...} }), not an Error.
  const nested = error instanceof Error ? undefined : error?.error;
  return {
    name: error?.name ?? error?.type,
    message: error?.message ?? nested?.message,
    code: error?.code ?? nested?.code,
    statusCode: error?.statusCode,
    responseBody: error?.responseBody,
  };
}

function usageOf(usage) {
  if (!usage) return null;
  return { inputTokens: usage.inputTokens, outputTokens: usage.outputTokens, totalTokens: usage.totalTokens };
}

function finishReasonOf(reason) {
  // AI SDK 7 reports { unified, raw }; AI SDK 5 a string.
  return typeof reason === "object" && reason !== null ? reason.unified : reason;
}

const tools = {
  get_weather: tool({
    description: "The weather in a city",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => `21 degrees in ${city}`,
  }),
};

function callsOf(calls) {
  return (calls ?? []).map((call) => ({ toolCallId: call.toolCallId, toolName: call.toolName, input: call.input }));
}

const summary = { sdk: sdkName, mode };
try {
  if (mode === "object") {
    const output = Output.object({ schema: z.object({ city: z.string(), degrees: z.number() }) });
    // AI SDK 5 names the option experimental_output; 6+ output.
    const options = sdkName === "v5" ? { experimental_output: output } : { output };
    const result = await generateText({ ...base, ...options, prompt: "Weather in Zürich?" });
    summary.object = sdkName === "v5" ? result.experimental_output : result.output;
    summary.finishReason = finishReasonOf(result.finishReason);
  } else if (mode === "image") {
    const png = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const result = await generateText({
      ...base,
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "What is this?" },
            { type: "image", image: png, mediaType: "image/png" },
          ],
        },
      ],
    });
    summary.text = result.text;
  } else if (mode === "tools") {
    const result = await generateText({ ...base, tools, stopWhen: stepCountIs(2), prompt: "Weather in Zürich?" });
    Object.assign(summary, {
      text: result.text,
      finishReason: finishReasonOf(result.finishReason),
      steps: result.steps.map((step) => ({
        finishReason: finishReasonOf(step.finishReason),
        toolCalls: callsOf(step.toolCalls),
        toolResults: (step.toolResults ?? []).map((r) => r.output),
        text: step.text,
      })),
    });
  } else if (mode === "tools-stream") {
    const result = streamText({
      ...base,
      tools,
      stopWhen: stepCountIs(2),
      prompt: "Weather in Zürich?",
      onError: () => {},
    });
    const parts = [];
    const errors = [];
    const toolCalls = [];
    const toolResults = [];
    let inputDeltas = "";
    let text = "";
    for await (const part of result.fullStream) {
      parts.push(part.type);
      if (part.type === "text-delta") text += part.text ?? part.delta ?? "";
      else if (part.type === "tool-input-delta") inputDeltas += part.delta ?? part.inputTextDelta ?? "";
      else if (part.type === "tool-call") toolCalls.push(...callsOf([part]));
      else if (part.type === "tool-result") toolResults.push(part.output);
      else if (part.type === "error") errors.push(describeError(part.error));
      else if (part.type === "finish-step") (summary.stepFinishes ??= []).push(finishReasonOf(part.finishReason));
      else if (part.type === "finish") summary.finishReason = finishReasonOf(part.finishReason);
    }
    Object.assign(summary, { text, parts, errors, toolCalls, toolResults, inputDeltas });
  } else if (mode === "stream") {
    const result = streamText({ ...base, prompt: "Say hello", onError: () => {} });
    const parts = [];
    const errors = [];
    let text = "";
    let reasoning = "";
    for await (const part of result.fullStream) {
      parts.push(part.type);
      if (part.type === "text-delta") text += part.text ?? part.delta ?? "";
      else if (part.type === "reasoning-delta") reasoning += part.text ?? part.delta ?? "";
      else if (part.type === "error") errors.push(describeError(part.error));
      else if (part.type === "finish") {
        summary.finishReason = finishReasonOf(part.finishReason);
        summary.usage = usageOf(part.totalUsage ?? part.usage);
      }
    }
    Object.assign(summary, { text, reasoning, parts, errors });
  } else {
    const first = await generateText({ ...base, system: "Be terse.", prompt: "Say hello" });
    Object.assign(summary, {
      text: first.text,
      reasoning: first.reasoningText ?? null,
      finishReason: finishReasonOf(first.finishReason),
      usage: usageOf(first.usage),
      responseId: first.response?.id,
      responseModel: first.response?.modelId,
      warnings: first.warnings ?? [],
    });
    if (mode === "two-turn") {
      const history = [{ role: "user", content: "Say hello" }, ...first.response.messages];
      const second = await generateText({ ...base, messages: [...history, { role: "user", content: "Again" }] });
      summary.secondText = second.text;
    }
  }
} catch (error) {
  summary.error = describeError(error);
}
console.log(JSON.stringify(summary));
