// A line diff of two texts: the longest common subsequence of their lines, after trimming the common head and
// tail (which is most of a typical edit), so the quadratic table covers only the changed middle.

const MAX_CELLS = 25_000_000;

/** Returns `[{op: ' ' | '-' | '+', text, a, b}]` where `a`/`b` are 1-based line numbers in each text. */
export function diffLines(oldText, newText) {
  const a = oldText.split('\n');
  const b = newText.split('\n');
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head += 1;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail += 1;
  const midA = a.slice(head, a.length - tail);
  const midB = b.slice(head, b.length - tail);
  const result = [];
  for (let i = 0; i < head; i += 1) result.push({ op: ' ', text: a[i], a: i + 1, b: i + 1 });
  for (const entry of middle(midA, midB)) {
    result.push({
      op: entry.op,
      text: entry.text,
      a: entry.a === null ? null : entry.a + head + 1,
      b: entry.b === null ? null : entry.b + head + 1,
    });
  }
  for (let i = tail; i > 0; i -= 1) {
    result.push({ op: ' ', text: a[a.length - i], a: a.length - i + 1, b: b.length - i + 1 });
  }
  return result;
}

function middle(a, b) {
  const n = a.length;
  const m = b.length;
  // Past this size the table would not fit comfortably in memory: show the block as replaced.
  if ((n + 1) * (m + 1) > MAX_CELLS) {
    return [...a.map((text, i) => ({ op: '-', text, a: i, b: null })), ...b.map((text, j) => ({ op: '+', text, a: null, b: j }))];
  }
  const width = m + 1;
  const lcs = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lcs[i * width + j] = a[i] === b[j]
        ? lcs[(i + 1) * width + j + 1] + 1
        : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      out.push({ op: ' ', text: a[i], a: i, b: j });
      i += 1;
      j += 1;
    } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
      out.push({ op: '-', text: a[i], a: i, b: null });
      i += 1;
    } else {
      out.push({ op: '+', text: b[j], a: null, b: j });
      j += 1;
    }
  }
  for (; i < n; i += 1) out.push({ op: '-', text: a[i], a: i, b: null });
  for (; j < m; j += 1) out.push({ op: '+', text: b[j], a: null, b: j });
  return out;
}
