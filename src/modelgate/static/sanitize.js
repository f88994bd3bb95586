// Catalogue descriptions are HTML written by whoever edits the catalogue file. They are shown
// through an allowlist: the markup is parsed by DOMParser (an inert document: no script runs, no
// image loads, no handler fires) and a fresh tree is built from it with createElement, copying
// only allowed elements and, of attributes, only a safe href. Everything else is unwrapped to its
// text; the contents of elements that are code or metadata rather than prose are dropped.
// Nothing here ever assigns raw catalogue text to innerHTML.

const ALLOWED = new Set(["STRONG", "EM", "B", "I", "BR", "P", "UL", "OL", "LI", "CODE", "A"]);

// Unwrapping these would show source code or invisible metadata as text; drop them whole.
const DROPPED = new Set([
  "SCRIPT", "STYLE", "TEMPLATE", "NOSCRIPT", "IFRAME", "FRAME", "FRAMESET", "OBJECT", "EMBED",
  "TITLE", "HEAD", "META", "LINK", "BASE", "TEXTAREA", "SELECT", "OPTION", "XMP", "NOEMBED", "PLAINTEXT",
]);

const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

/** An absolute http(s)/mailto URL, normalized, or null (relative, javascript:, data:, …). */
export function safeHref(raw) {
  if (typeof raw !== "string") return null;
  let url;
  try {
    url = new URL(raw.trim()); // no base: relative URLs throw and are dropped
  } catch {
    return null;
  }
  return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
}

/** Sanitize an HTML string into a DocumentFragment owned by `doc` (default: this document). */
export function sanitizeHtml(html, doc = document) {
  const inert = new DOMParser().parseFromString(String(html ?? ""), "text/html");
  const out = doc.createDocumentFragment();
  copyChildren(inert.body, out, doc, 0);
  return out;
}

const MAX_DEPTH = 64; // deeper nesting is flattened to text: no stack games with hostile input

function copyChildren(from, to, doc, depth) {
  for (const node of from.childNodes) {
    if (node.nodeType === Node.TEXT_NODE) {
      to.appendChild(doc.createTextNode(node.data));
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      copyElement(node, to, doc, depth);
    }
    // comments, processing instructions, doctypes: dropped
  }
}

function copyElement(element, to, doc, depth) {
  const tag = element.tagName.toUpperCase(); // SVG/MathML elements keep their case; compare uppercased
  if (DROPPED.has(tag)) return;
  if (!ALLOWED.has(tag) || depth >= MAX_DEPTH || element.namespaceURI !== "http://www.w3.org/1999/xhtml") {
    copyChildren(element, to, doc, depth + 1); // unwrap: keep the text, lose the element
    return;
  }
  const copy = doc.createElement(tag.toLowerCase());
  if (tag === "A") {
    const href = safeHref(element.getAttribute("href"));
    if (href === null) {
      copyChildren(element, to, doc, depth + 1);
      return;
    }
    copy.setAttribute("href", href);
    copy.setAttribute("rel", "noopener noreferrer");
    copy.setAttribute("target", "_blank");
  }
  if (tag !== "BR") copyChildren(element, copy, doc, depth + 1);
  to.appendChild(copy);
}
