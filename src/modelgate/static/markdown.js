// A small Markdown renderer for model replies, safe by construction: it builds DOM nodes with
// createElement/createTextNode and never parses HTML, so whatever a model writes (including
// "<script>") is shown as text. It covers what chat models actually emit: fenced code blocks,
// headings, lists (nested by indentation), block quotes, tables, rules, paragraphs; inline code,
// bold, italics, strikethrough, links (http/https/mailto only) and bare URLs.
// It is re-run on the whole text as a reply streams in, so an unterminated code fence renders
// as a code block in progress, and an unclosed "**" stays literal until it closes.

import { safeHref } from "./sanitize.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:\s+(.*)|$)/;
const TABLE_DIVIDER = /^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$/;

/** Render Markdown `text` into a DocumentFragment. */
export function renderMarkdown(text, doc = document) {
  const out = doc.createDocumentFragment();
  renderBlocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"), out, doc, 0);
  return out;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function renderBlocks(lines, parent, doc, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      i = renderFence(lines, i, m, parent, doc);
    } else if ((m = HEADING.exec(line))) {
      const level = Math.min(m[1].length + 2, 6); // the page owns h1/h2
      parent.appendChild(inline(doc, `h${level}`, m[2] ?? ""));
      i += 1;
    } else if (RULE.test(line)) {
      parent.appendChild(doc.createElement("hr"));
      i += 1;
    } else if (QUOTE.test(line) && depth < 16) {
      const quoted = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        quoted.push(m[1]);
        i += 1;
      }
      const quote = doc.createElement("blockquote");
      renderBlocks(quoted, quote, doc, depth + 1);
      parent.appendChild(quote);
    } else if (ITEM.test(line) && depth < 16) {
      i = renderList(lines, i, parent, doc, depth);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_DIVIDER.test(lines[i + 1])) {
      i = renderTable(lines, i, parent, doc);
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !(paragraph.length && startsBlock(lines[i]))) {
        paragraph.push(lines[i].trim());
        i += 1;
      }
      parent.appendChild(inlineLines(doc, "p", paragraph));
    }
  }
}

function renderFence(lines, start, match, parent, doc) {
  const marker = match[1];
  const body = [];
  let i = start + 1;
  while (i < lines.length) {
    const close = lines[i].trim();
    if (close.startsWith(marker[0].repeat(marker.length)) && /^(`+|~+)$/.test(close)) {
      i += 1;
      break;
    }
    body.push(lines[i]);
    i += 1;
  }
  const pre = doc.createElement("pre");
  const code = doc.createElement("code");
  if (match[2]) {
    pre.dataset.lang = match[2];
    code.className = `language-${match[2].replace(/[^\w+#.-]/g, "")}`;
  }
  code.textContent = body.join("\n");
  pre.appendChild(code);
  parent.appendChild(pre);
  return i;
}

function renderList(lines, start, parent, doc, depth) {
  const first = ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const list = doc.createElement(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let i = start;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || /\d/.test(m[2]) !== ordered) break;
    const indent = m[1].length + m[2].length + 1;
    const body = [m[3] ?? ""];
    i += 1;
    // The item continues over indented lines and over blank lines followed by indented lines.
    while (i < lines.length) {
      const next = lines[i];
      if (!next.trim()) {
        if (!(i + 1 < lines.length && /^\s{2,}\S/.test(lines[i + 1]))) break;
        body.push("");
        i += 1;
      } else if (/^\s{2,}/.test(next)) {
        body.push(next.replace(new RegExp(`^ {0,${indent}}`), "")); // nested content, nested lists
        i += 1;
      } else if (!startsBlock(next) && body[body.length - 1].trim()) {
        body.push(next.trim()); // lazy continuation of the item's paragraph
        i += 1;
      } else {
        break;
      }
    }
    const item = doc.createElement("li");
    if (body.length === 1) {
      appendInline(doc, item, body[0]);
    } else {
      renderBlocks(body, item, doc, depth + 1);
      // A tight item (no blank line inside) shows its paragraphs without paragraph margins.
      if (!body.some((line) => !line.trim())) {
        for (const child of [...item.childNodes]) {
          if (child.nodeName === "P") child.replaceWith(...child.childNodes);
        }
      }
    }
    list.appendChild(item);
    while (i < lines.length && !lines[i].trim() && i + 1 < lines.length && ITEM.test(lines[i + 1])) i += 1;
  }
  parent.appendChild(list);
  return i;
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function renderTable(lines, start, parent, doc) {
  const head = splitRow(lines[start]);
  const align = splitRow(lines[start + 1]).map((cell) =>
    cell.startsWith(":") && cell.endsWith(":") ? "center" : cell.endsWith(":") ? "right" : "",
  );
  const wrap = doc.createElement("div");
  wrap.className = "table-wrap";
  const table = doc.createElement("table");
  const thead = doc.createElement("thead");
  const headRow = doc.createElement("tr");
  head.forEach((cell, k) => {
    const th = inline(doc, "th", cell);
    if (align[k]) th.style.textAlign = align[k];
    headRow.appendChild(th);
  });
  thead.appendChild(headRow);
  table.appendChild(thead);
  const tbody = doc.createElement("tbody");
  let i = start + 2;
  while (i < lines.length && lines[i].trim() && lines[i].includes("|")) {
    const tr = doc.createElement("tr");
    splitRow(lines[i]).forEach((cell, k) => {
      const td = inline(doc, "td", cell);
      if (align[k]) td.style.textAlign = align[k];
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
    i += 1;
  }
  table.appendChild(tbody);
  wrap.appendChild(table);
  parent.appendChild(wrap);
  return i;
}

// --- inline -----------------------------------------------------------------------------------

const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1,2 code span
    /\[([^\]\n]+)\]\(\s*<?([^()\s<>]+)>?(?:\s+"[^"\n]*")?\s*\)/.source, // 3,4 link
    /<((?:https?|mailto):[^\s<>]+)>/.source, // 5 autolink
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 6 strong
    /__(?=\S)([\s\S]*?\S)__(?!\w)/.source, // 7 strong
    /~~(?=\S)([\s\S]*?\S)~~/.source, // 8 strikethrough
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/.source, // 9 em
    /(?<![\w\\])_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source, // 10 em
    /(https?:\/\/[^\s<>]*[^\s<>.,;:!?'")\]*_~])/.source, // 11 bare URL
    /\\([\\`*_{}[\]()#+\-.!|~<>])/.source, // 12 backslash escape
  ].join("|"),
);

function inline(doc, tag, text) {
  const element = doc.createElement(tag);
  appendInline(doc, element, text);
  return element;
}

function inlineLines(doc, tag, lines) {
  const element = doc.createElement(tag);
  lines.forEach((line, k) => {
    if (k) element.appendChild(doc.createElement("br")); // chat replies mean their line breaks
    appendInline(doc, element, line);
  });
  return element;
}

/** A link to a safe URL, labelled with inline Markdown (`depth` given) or with plain text (a URL). */
function link(doc, href, label, depth = null) {
  const safe = safeHref(href);
  if (safe === null) return null;
  const a = doc.createElement("a");
  a.href = safe;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  if (depth === null) a.textContent = label;
  else appendInline(doc, a, label, depth + 1);
  return a;
}

function appendInline(doc, parent, text, depth = 0) {
  let rest = text;
  while (rest) {
    const m = depth < 8 ? INLINE.exec(rest) : null;
    if (!m) {
      parent.appendChild(doc.createTextNode(rest));
      return;
    }
    if (m.index) parent.appendChild(doc.createTextNode(rest.slice(0, m.index)));
    let node = null;
    if (m[2] !== undefined) {
      node = doc.createElement("code");
      node.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
    } else if (m[3] !== undefined) {
      node = link(doc, m[4], m[3], depth);
    } else if (m[5] !== undefined) {
      node = link(doc, m[5], m[5]);
    } else if (m[6] !== undefined || m[7] !== undefined) {
      node = doc.createElement("strong");
      appendInline(doc, node, m[6] ?? m[7], depth + 1);
    } else if (m[8] !== undefined) {
      node = doc.createElement("del");
      appendInline(doc, node, m[8], depth + 1);
    } else if (m[9] !== undefined || m[10] !== undefined) {
      node = doc.createElement("em");
      appendInline(doc, node, m[9] ?? m[10], depth + 1);
    } else if (m[11] !== undefined) {
      node = link(doc, m[11], m[11]);
    } else if (m[12] !== undefined) {
      node = doc.createTextNode(m[12]);
    }
    parent.appendChild(node ?? doc.createTextNode(m[0]));
    rest = rest.slice(m.index + m[0].length);
  }
}
