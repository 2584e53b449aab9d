// A small markdown renderer that builds DOM nodes and never parses HTML.
//
// Replies and logs can contain anything (the user's code prints what it likes, a model answers
// what it likes), so every piece of text becomes a Text node: `<script>` shows as `<script>`.
// Supported: paragraphs (a single newline is a line break, as in chat), **bold**, __bold__,
// *italic*, _italic_, `code`, fenced code blocks, bullet and numbered lists (one level of
// nesting by indentation), headings, block quotes, rules, and links to http(s) URLs only.

/** Renders `text` as a DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  renderBlocks(lines, fragment);
  return fragment;
}

/** A link's URL when it is http(s), else null: `javascript:`, `data:` and the like are text. */
export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** An `<a>` that opens `href` in a new tab without handing it this page. */
export function externalLink(href, label) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.textContent = label ?? href;
  return a;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+.-]*)\s*$/;
const BULLET = /^(\s*)[-*+]\s+(.*)$/;
const NUMBERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

function listMatch(line) {
  let m = BULLET.exec(line);
  if (m) return { indent: m[1].length, ordered: false, start: 1, text: m[2] };
  m = NUMBERED.exec(line);
  if (m) return { indent: m[1].length, ordered: true, start: Number(m[2]), text: m[3] };
  return null;
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      i = renderFence(lines, i, fence, parent);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      // Headings inside a chat stay modest: # is h3, the rest h4.
      const h = document.createElement(heading[1].length === 1 ? "h3" : "h4");
      renderInline(heading[2], h);
      parent.append(h);
      i += 1;
      continue;
    }
    if (RULE.test(line) && !listMatch(line)) {
      parent.append(document.createElement("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        quoted.push(QUOTE.exec(lines[i])[1]);
        i += 1;
      }
      const blockquote = document.createElement("blockquote");
      renderBlocks(quoted, blockquote);
      parent.append(blockquote);
      continue;
    }
    if (listMatch(line)) {
      i = renderList(lines, i, parent);
      continue;
    }
    // A paragraph: until a blank line or the start of another block.
    const p = document.createElement("p");
    let first = true;
    while (i < lines.length) {
      const l = lines[i];
      if (l.trim() === "" || (!first && (FENCE.test(l) || HEADING.test(l) || listMatch(l) || QUOTE.test(l)))) break;
      if (!first) p.append(document.createElement("br"));
      renderInline(l.trim(), p);
      first = false;
      i += 1;
    }
    parent.append(p);
  }
}

function renderFence(lines, i, fence, parent) {
  const marker = fence[1];
  const body = [];
  let j = i + 1;
  while (j < lines.length && !(lines[j].trim().startsWith(marker[0].repeat(marker.length)) && lines[j].trim().replace(/[`~]/g, "") === "")) {
    body.push(lines[j]);
    j += 1;
  }
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (fence[2]) code.dataset.lang = fence[2];
  code.textContent = body.join("\n");
  pre.append(code);
  parent.append(pre);
  return Math.min(j + 1, lines.length);
}

function renderList(lines, i, parent) {
  const first = listMatch(lines[i]);
  const list = document.createElement(first.ordered ? "ol" : "ul");
  if (first.ordered && first.start !== 1) list.start = first.start;
  let item = null;
  let itemLines = [];
  const flush = () => {
    if (item) {
      renderItem(itemLines, item);
      list.append(item);
    }
  };
  while (i < lines.length) {
    const line = lines[i];
    const m = listMatch(line);
    if (m && m.indent <= first.indent + 1 && m.ordered === first.ordered) {
      flush();
      item = document.createElement("li");
      itemLines = [m.text];
      i += 1;
      continue;
    }
    if (m && m.indent <= first.indent + 1) break; // the other kind of list starts
    if (line.trim() === "") {
      // A blank line ends the list unless the next line continues it.
      const next = lines[i + 1];
      if (next !== undefined && (listMatch(next)?.indent > first.indent || (/^\s{2,}\S/.test(next) && !listMatch(next)))) {
        itemLines.push("");
        i += 1;
        continue;
      }
      if (next !== undefined && listMatch(next) && listMatch(next).ordered === first.ordered && listMatch(next).indent <= first.indent + 1) {
        i += 1;
        continue;
      }
      break;
    }
    if (m || /^\s{2,}\S/.test(line)) {
      // Nested list lines and indented continuations belong to the current item.
      itemLines.push(line.replace(/^\s{2,4}/, ""));
      i += 1;
      continue;
    }
    // A lazy continuation of the item's paragraph.
    if (FENCE.test(line) || HEADING.test(line) || QUOTE.test(line)) break;
    itemLines.push(line.trim());
    i += 1;
  }
  flush();
  parent.append(list);
  return i;
}

function renderItem(itemLines, li) {
  // A tight item (one paragraph, maybe a nested list) renders without <p>.
  const restStart = itemLines.findIndex((l, k) => k > 0 && (listMatch(l) || FENCE.test(l) || l === ""));
  const head = restStart === -1 ? itemLines : itemLines.slice(0, restStart);
  head.forEach((l, k) => {
    if (k > 0) li.append(document.createElement("br"));
    renderInline(l.trim(), li);
  });
  if (restStart !== -1) renderBlocks(itemLines.slice(restStart), li);
}

// Inline spans, scanned left to right.

const URL_RE = /^https?:\/\/[^\s<>"'`]+/i;

/** Appends the inline markdown of `text` to `parent`. */
export function renderInline(text, parent) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    // Backslash escapes a punctuation character.
    if (c === "\\" && i + 1 < text.length && /[\\`*_[\]()#+\-.!>~|{}]/.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      const run = /^`+/.exec(text.slice(i))[0];
      const end = text.indexOf(run, i + run.length);
      if (end !== -1) {
        flush();
        const code = document.createElement("code");
        let inner = text.slice(i + run.length, end);
        if (inner.length > 2 && inner.startsWith(" ") && inner.endsWith(" ")) inner = inner.slice(1, -1);
        code.textContent = inner;
        parent.append(code);
        i = end + run.length;
        continue;
      }
      buffer += run;
      i += run.length;
      continue;
    }
    if ((c === "*" || c === "_") && text[i + 1] === c) {
      const end = findClose(text, i + 2, c + c);
      if (end !== -1 && canOpen(text, i, c, 2)) {
        flush();
        const strong = document.createElement("strong");
        renderInline(text.slice(i + 2, end), strong);
        parent.append(strong);
        i = end + 2;
        continue;
      }
    }
    if ((c === "*" || c === "_") && text[i + 1] !== c) {
      const end = findClose(text, i + 1, c);
      if (end !== -1 && canOpen(text, i, c, 1)) {
        flush();
        const em = document.createElement("em");
        renderInline(text.slice(i + 1, end), em);
        parent.append(em);
        i = end + 1;
        continue;
      }
    }
    if (c === "[") {
      const link = parseLink(text, i);
      if (link) {
        flush();
        const href = safeUrl(link.url);
        if (href) {
          const a = externalLink(href, "");
          renderInline(link.label, a);
          parent.append(a);
        } else {
          // Not an http(s) link: the label alone, as text.
          renderInline(link.label, parent);
        }
        i = link.end;
        continue;
      }
    }
    if (c === "<") {
      // An autolink: <https://example.com>.
      const m = /^<(https?:\/\/[^\s<>]+)>/i.exec(text.slice(i));
      const href = m && safeUrl(m[1]);
      if (href) {
        flush();
        parent.append(externalLink(href, m[1]));
        i += m[0].length;
        continue;
      }
    }
    if ((c === "h" || c === "H") && (i === 0 || /[\s(]/.test(text[i - 1]))) {
      const m = URL_RE.exec(text.slice(i));
      if (m) {
        // Trailing punctuation usually ends the sentence, not the URL.
        let url = m[0].replace(/[.,;:!?]+$/, "");
        if (url.endsWith(")") && !url.includes("(")) url = url.slice(0, -1);
        const href = safeUrl(url);
        if (href) {
          flush();
          parent.append(externalLink(href, url));
          i += url.length;
          continue;
        }
      }
    }
    buffer += c;
    i += 1;
  }
  flush();
}

function canOpen(text, i, c, n) {
  const next = text[i + n];
  if (next === undefined || /\s/.test(next)) return false;
  // `_` inside a word (snake_case) is not emphasis.
  if (c === "_" && i > 0 && /\w/.test(text[i - 1])) return false;
  return true;
}

function findClose(text, from, marker) {
  let j = from;
  while (j < text.length) {
    const k = text.indexOf(marker, j);
    if (k === -1) return -1;
    const before = text[k - 1];
    const after = text[k + marker.length];
    const closesWord = marker[0] === "_" ? after === undefined || !/\w/.test(after) : true;
    // A single marker must not be half of a double one.
    const single = marker.length === 1 && (text[k + 1] === marker || before === marker);
    if (k > from && before !== " " && closesWord && !single) return k;
    j = k + marker.length;
  }
  return -1;
}

function parseLink(text, i) {
  let depth = 0;
  let j = i;
  for (; j < text.length; j += 1) {
    if (text[j] === "[") depth += 1;
    else if (text[j] === "]") {
      depth -= 1;
      if (depth === 0) break;
    }
  }
  if (j >= text.length || text[j + 1] !== "(") return null;
  // The URL may hold balanced parentheses (Wikipedia links do).
  let close = -1;
  let open = 0;
  for (let k = j + 2; k < text.length; k += 1) {
    if (text[k] === "(") open += 1;
    else if (text[k] === ")") {
      if (open === 0) {
        close = k;
        break;
      }
      open -= 1;
    }
  }
  if (close === -1) return null;
  const url = text.slice(j + 2, close).trim().split(/\s+/)[0];
  return { label: text.slice(i + 1, j), url, end: close + 1 };
}
