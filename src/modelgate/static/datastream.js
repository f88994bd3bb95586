// Client side of the AI SDK data stream protocol v1 (ai 4.x, `X-Vercel-AI-Data-Stream: v1`):
// one part per line, `<code>:<JSON>\n`. As in the SDK's own processDataStream, bytes are decoded
// incrementally (a UTF-8 character may be split across reads), a partial line waits in a buffer
// for the rest, empty lines are skipped, and a line is split at its first ':'.
// https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol#data-stream-protocol

/** Codes of the v1 protocol; the playground acts on 0 g 3 d e f 8 and ignores the others. */
export const PART_CODES = new Set(["0", "2", "3", "8", "9", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]);

export class StreamProtocolError extends Error {}

/** Incremental line parser: feed(Uint8Array) → parts; end() → the parts of a final unterminated line. */
export class DataStreamParser {
  constructor() {
    this.decoder = new TextDecoder("utf-8");
    this.buffer = "";
  }

  feed(bytes) {
    this.buffer += this.decoder.decode(bytes, { stream: true });
    const lines = this.buffer.split("\n");
    this.buffer = lines.pop();
    return lines.filter((line) => line.trim()).map(parseLine);
  }

  end() {
    const rest = this.buffer + this.decoder.decode();
    this.buffer = "";
    return rest.trim() ? [parseLine(rest)] : [];
  }
}

/** `0:"Hi"` → {code: "0", value: "Hi"}; throws StreamProtocolError on a malformed line. */
export function parseLine(line) {
  const colon = line.indexOf(":");
  const code = colon === -1 ? "" : line.slice(0, colon);
  if (!PART_CODES.has(code)) {
    throw new StreamProtocolError(`Malformed stream line (unknown part ${JSON.stringify(code || line.slice(0, 20))})`);
  }
  try {
    return { code, value: JSON.parse(line.slice(colon + 1)) };
  } catch {
    throw new StreamProtocolError(`Malformed stream line (invalid JSON in a '${code}' part)`);
  }
}

/** Read `response.body` to the end, calling `onPart({code, value})` for every part as it arrives. */
export async function readDataStream(response, onPart) {
  const reader = response.body.getReader();
  const parser = new DataStreamParser();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      for (const part of parser.feed(value)) onPart(part);
    }
    for (const part of parser.end()) onPart(part);
  } catch (error) {
    reader.cancel().catch(() => {}); // a broken stream is not read further: close the connection
    throw error;
  }
}
