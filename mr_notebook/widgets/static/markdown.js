// Markdown for chat replies (part of mr_notebook, Apache-2.0), from two maintained libraries vendored in
// static/vendor (see its README): markdown-it renders, DOMPurify sanitises the result.
//
// Model text is attacker-written. Raw HTML is off in markdown-it (it is shown as text), links must be
// http(s) or mailto, images become links (a remote image would send the conversation to any URL a
// model names), and DOMPurify then removes anything outside a short list of tags and attributes, in case a
// renderer bug lets markup through. Without a DOM for DOMPurify the text is shown as plain text.
//
// Work per render is bounded: markdown-it parses in linear time with at most MD_MAX_NESTING levels (deeper
// input is shown as plain text rather than half-dropped), and only the first MD_MAX_CHARS characters are
// rendered as Markdown; the rest of a very long reply follows as plain text. chat.js also spaces out
// re-renders of a streaming reply by what the last one cost.
// This file is concatenated after the vendored libraries (`markdownit`, `DOMPurify`) and before chat.js.

const MD_MAX_CHARS = 100_000;
const MD_MAX_NESTING = 20; // as in display.py, whose reasons (Python's cost) are the stricter
const MD_TAGS = [
  "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4",
  "h5", "h6", "hr", "a", "table", "thead", "tbody", "tr", "th", "td",
];
const MD_ATTRIBUTES = ["href", "title", "start"];
const MD_LINK = /^(https?:|mailto:)/i;

const md = markdownit("default", { html: false, linkify: true, breaks: true, maxNesting: MD_MAX_NESTING });
md.validateLink = (url) => MD_LINK.test(url.trim());
md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const source = tokens[idx].attrGet("src") || "";
  const label = self.renderInlineAsText(tokens[idx].children || [], options, env) || source;
  return `<a href="${md.utils.escapeHtml(source)}">${md.utils.escapeHtml(label)}</a>`;
};

// Block tokens at the nesting cap mean markdown-it dropped the rest of the input there.
function mdTooDeep(tokens) {
  return tokens.some((token) => token.level >= MD_MAX_NESTING - 1);
}

// HTML for the first MD_MAX_CHARS characters of `source` (not sanitised yet), or null when it nests too deep.
function markdownToHtml(source) {
  const tokens = md.parse(String(source).slice(0, MD_MAX_CHARS), {});
  return mdTooDeep(tokens) ? null : md.renderer.render(tokens, md.options, {});
}

function mdPlain(text) {
  const node = document.createElement("div");
  node.className = "mrnb-plain";
  node.textContent = text;
  return node;
}

// Show `source` as Markdown inside `el`, replacing what it held.
function renderMarkdown(el, source) {
  const text = String(source ?? "");
  const html = DOMPurify.isSupported ? markdownToHtml(text) : null;
  if (html === null) {
    el.replaceChildren(mdPlain(text));
    return;
  }
  // A fragment, not a string: the sanitised nodes are used as they are, never parsed again.
  const fragment = DOMPurify.sanitize(html, {
    ALLOWED_TAGS: MD_TAGS,
    ALLOWED_ATTR: MD_ATTRIBUTES,
    ALLOWED_URI_REGEXP: MD_LINK,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
  for (const link of fragment.querySelectorAll("a")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
  }
  el.replaceChildren(fragment);
  if (text.length > MD_MAX_CHARS) el.append(mdPlain(text.slice(MD_MAX_CHARS)));
}
