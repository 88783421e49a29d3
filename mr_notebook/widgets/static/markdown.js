// A small, safe Markdown renderer for chat replies (part of mr_notebook, Apache-2.0).
//
// Safety first: the source is HTML-escaped before any Markdown rule runs, and the only tags emitted are the
// ones below; link targets must be http(s) or mailto. Covers what chat models write: headings, paragraphs
// (single newlines kept as line breaks), **bold**, *italic*, ~~strike~~, `code`, fenced code blocks (an
// unclosed fence, as while streaming, runs to the end), bullet and numbered lists (nested by indent),
// block quotes, tables, horizontal rules and links.
// This file is concatenated in front of the widget module (anywidget loads one module, no bundler).

const MD_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function mdEscape(text) {
  return text.replace(/[&<>"']/g, (c) => MD_ESCAPES[c]);
}

// Inline rules on already-escaped text; code spans are set aside first so nothing inside them is formatted.
function mdInline(escaped) {
  const kept = [];
  const keep = (html) => `\u0000${kept.push(html) - 1}\u0000`;
  let s = escaped.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) => keep(`<code>${code.trim()}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, label, url) => {
    if (!/^(https?:\/\/|mailto:)/i.test(url)) return label;
    return keep(`<a href="${url}" target="_blank" rel="noopener noreferrer">${mdEmphasis(label)}</a>`);
  });
  s = s.replace(/(^|[\s(])(https?:\/\/[^\s<]+[^\s<.,;:!?)])/g, (_, lead, url) =>
    lead + keep(`<a href="${url}" target="_blank" rel="noopener noreferrer">${url}</a>`));
  s = mdEmphasis(s);
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => kept[Number(i)]);
}

function mdEmphasis(s) {
  return s
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/__(?=\S)([\s\S]*?\S)__(?!\w)/g, "<strong>$1</strong>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
    .replace(/(^|[^\w*])\*(?=\S)([^*\n]*?\S)\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, "$1<em>$2</em>");
}

const MD_FENCE = /^ {0,3}(```+|~~~+)\s*([\w+#.-]*)/;
const MD_HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const MD_RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const MD_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const MD_QUOTE = /^ {0,3}&gt;\s?(.*)$/;
const MD_TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

function mdCells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => mdInline(c.trim()));
}

// Items are [indent, ordered, text]; deeper indents become nested lists of the item above.
function mdList(items) {
  let html = "";
  let i = 0;
  const tag = items[0][1] ? "ol" : "ul";
  html += `<${tag}>`;
  while (i < items.length) {
    const [indent, , text] = items[i];
    let j = i + 1;
    while (j < items.length && items[j][0] > indent) j++;
    html += `<li>${mdInline(text)}${j > i + 1 ? mdList(items.slice(i + 1, j)) : ""}</li>`;
    i = j;
  }
  return html + `</${tag}>`;
}

function renderMarkdown(source) {
  const lines = mdEscape(String(source).replace(/\u0000/g, "").replace(/\r\n?/g, "\n")).split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = MD_FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i++;
      const lang = m[2] ? ` class="language-${m[2]}" data-lang="${m[2]}"` : "";
      out.push(`<pre><code${lang}>${body.join("\n")}</code></pre>`);
    } else if (!line.trim()) {
      i++;
    } else if ((m = MD_HEADING.exec(line))) {
      out.push(`<h${m[1].length}>${mdInline(m[2])}</h${m[1].length}>`);
      i++;
    } else if (MD_RULE.test(line)) {
      out.push("<hr>");
      i++;
    } else if (MD_QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = MD_QUOTE.exec(lines[i]))) {
        body.push(m[1]);
        i++;
      }
      out.push(`<blockquote>${renderMarkdownEscaped(body)}</blockquote>`);
    } else if (MD_ITEM.test(line)) {
      const items = [];
      while (i < lines.length && lines[i].trim()) {
        if ((m = MD_ITEM.exec(lines[i]))) {
          items.push([m[1].replace(/\t/g, "    ").length, /\d/.test(m[2]), m[3]]);
        } else {
          items[items.length - 1][2] += "\n" + lines[i].trim(); // a wrapped item continues
        }
        i++;
      }
      out.push(mdList(items));
    } else if (line.includes("|") && i + 1 < lines.length && MD_TABLE_SEP.test(lines[i + 1])) {
      const head = mdCells(line);
      i += 2;
      let rows = "";
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
        rows += `<tr>${mdCells(lines[i]).map((c) => `<td>${c}</td>`).join("")}</tr>`;
        i++;
      }
      out.push(`<table><thead><tr>${head.map((c) => `<th>${c}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table>`);
    } else {
      const para = [];
      while (
        i < lines.length && lines[i].trim() && !MD_FENCE.test(lines[i]) && !MD_HEADING.test(lines[i]) &&
        !MD_QUOTE.test(lines[i]) && !(para.length && MD_ITEM.test(lines[i]))
      ) {
        para.push(lines[i++]);
      }
      out.push(`<p>${mdInline(para.join("\n")).replace(/\n/g, "<br>")}</p>`);
    }
  }
  return out.join("");
}

// Block quotes hold Markdown too; their lines are escaped already, so unescape once and render again.
function renderMarkdownEscaped(lines) {
  const raw = lines.join("\n").replace(/&(amp|lt|gt|quot|#39);/g, (e) =>
    ({ "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'" })[e]);
  return renderMarkdown(raw);
}
