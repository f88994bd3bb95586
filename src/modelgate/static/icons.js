// Catalogue icons are Iconify ids ("simple-icons:google"). The SVG path data of the ids the default
// catalogue uses ships in icons.json (extracted from the npm packages named there; see LICENSES.md),
// so no icon is ever fetched from a third-party host. Any other id gets a monogram tile.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Load the icon set shipped next to this module; an unreadable set just means monograms. */
export async function loadIcons() {
  try {
    const response = await fetch(new URL("./icons.json", import.meta.url));
    if (!response.ok) return { sources: {}, icons: {} };
    return await response.json();
  } catch {
    return { sources: {}, icons: {} };
  }
}

/** A decorative icon tile for `iconId`; `label` (publisher or model name) feeds the monogram. */
export function iconTile(iconSet, iconId, label, doc = document) {
  const tile = doc.createElement("span");
  tile.className = "icon";
  tile.setAttribute("aria-hidden", "true");
  const icon = iconSet.icons?.[iconId];
  if (icon && Array.isArray(icon.paths)) {
    const svg = doc.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", icon.viewBox || "0 0 24 24");
    svg.setAttribute("focusable", "false");
    for (const d of icon.paths) {
      const path = doc.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      path.setAttribute("fill", "currentColor");
      svg.appendChild(path);
    }
    tile.appendChild(svg);
    tile.dataset.icon = iconId;
    if (icon.color) tile.style.setProperty("--brand", icon.color);
  } else {
    tile.classList.add("monogram");
    tile.dataset.icon = iconId || "";
    tile.textContent = monogram(label);
    tile.style.setProperty("--hue", String(hue(iconId || label)));
  }
  return tile;
}

/** "microsoft" → "M", "deepseek-ai" → "DA", "Qwen2.5-72B" → "Q7". */
export function monogram(label) {
  const words = String(label || "?").split(/[^A-Za-z0-9]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?")[0];
  return letters.toUpperCase();
}

function hue(text) {
  let h = 0;
  for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}
