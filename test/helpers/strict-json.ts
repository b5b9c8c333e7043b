/**
 * JSON.parse keeps the last of two equal keys without a word; log consumers disagree on which one
 * wins. This parser reads one JSON text and returns the paths of every key that appears twice in
 * the same object (`["name", "auth.nodes"]`), throwing on text that is not JSON.
 */
export function duplicateKeys(text: string): string[] {
  let i = 0;
  const dups: string[] = [];
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at ${i} in ${text.slice(0, 200)}`);
  };
  const space = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const string = (): string => {
    if (text[i] !== '"') fail('expected a string');
    let j = i + 1;
    while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
    if (j >= text.length) fail('unterminated string');
    const s = JSON.parse(text.slice(i, j + 1)) as string;
    i = j + 1;
    return s;
  };
  const value = (path: string): void => {
    space();
    const c = text[i];
    if (c === '{') {
      i++;
      const seen = new Set<string>();
      space();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        space();
        const key = string();
        if (seen.has(key)) dups.push(path + key);
        seen.add(key);
        space();
        if (text[i++] !== ':') fail('expected :');
        value(`${path}${key}.`);
        space();
        const next = text[i++];
        if (next === '}') return;
        if (next !== ',') fail('expected , or }');
      }
    }
    if (c === '[') {
      i++;
      space();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (;;) {
        value(`${path}[].`);
        space();
        const next = text[i++];
        if (next === ']') return;
        if (next !== ',') fail('expected , or ]');
      }
    }
    if (c === '"') {
      string();
      return;
    }
    const m = /^(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i, i + 64));
    if (!m) fail('expected a value');
    i += m![0].length;
  };
  value('');
  space();
  if (i !== text.length) fail('text after the value');
  return dups;
}
