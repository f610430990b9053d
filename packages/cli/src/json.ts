/**
 * JSON parsing with errors a person can act on: `line 3, column 8: unexpected "o"` instead of V8's
 * message, which has no position for most mistakes and quotes the whole input.
 */

export interface JsonProblem {
  line: number;
  column: number;
  /** What is wrong, e.g. `unexpected "o"`, `unexpected end of input`. */
  message: string;
}

export type JsonResult = { ok: true; value: unknown } | { ok: false; problem: JsonProblem };

export function parseJson(text: string): JsonResult {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (e) {
    return { ok: false, problem: locateJsonError(text) ?? { line: 1, column: 1, message: (e as Error).message } };
  }
}

export function describeJsonProblem(p: JsonProblem, multiLine: boolean): string {
  return multiLine ? `line ${p.line}, column ${p.column}: ${p.message}` : `column ${p.column}: ${p.message}`;
}

/** Find the first syntax error of invalid JSON (a small scanner; only runs after JSON.parse failed). */
export function locateJsonError(text: string): JsonProblem | undefined {
  let i = 0;
  const fail = (message: string): never => {
    throw new ScanError(i, message);
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const unexpected = (): never => fail(i >= text.length ? 'unexpected end of input' : `unexpected ${JSON.stringify(text[i])}`);
  const literal = (word: string) => {
    if (text.startsWith(word, i)) i += word.length;
    else unexpected();
  };
  const string = () => {
    i++; // opening quote
    while (i < text.length) {
      const c = text[i]!;
      if (c === '"') return void i++;
      if (c === '\\') {
        const n = text[i + 1];
        if (n === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail('bad \\u escape in a string');
          i += 6;
        } else if (n !== undefined && '"\\/bfnrt'.includes(n)) i += 2;
        else fail('bad escape in a string');
      } else if (c < ' ') fail(c === '\n' ? 'line break inside a string (missing closing quote?)' : 'control character inside a string');
      else i++;
    }
    fail('unterminated string');
  };
  const number = () => {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (!m || m[0] === '-' || m[0] === '') unexpected();
    i += m![0].length;
  };
  const value = (): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      ws();
      if (text[i] === '}') return void i++;
      for (;;) {
        ws();
        if (text[i] !== '"') fail(text[i] === '}' ? 'trailing comma before "}"' : i >= text.length ? 'unexpected end of input' : `expected a quoted property name, found ${JSON.stringify(text[i])}`);
        string();
        ws();
        if (text[i] !== ':') fail(`expected ":" after a property name${i < text.length ? `, found ${JSON.stringify(text[i])}` : ''}`);
        i++;
        value();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') return void i++;
        fail(i >= text.length ? 'unexpected end of input (missing "}"?)' : `expected "," or "}", found ${JSON.stringify(text[i])}`);
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') return void i++;
      for (;;) {
        ws();
        if (text[i] === ']') fail('trailing comma before "]"');
        value();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') return void i++;
        fail(i >= text.length ? 'unexpected end of input (missing "]"?)' : `expected "," or "]", found ${JSON.stringify(text[i])}`);
      }
    }
    if (c === '"') return string();
    if (c === 't') return literal('true');
    if (c === 'f') return literal('false');
    if (c === 'n') return literal('null');
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return number();
    if (c === "'") fail('strings need double quotes, not single quotes');
    unexpected();
  };
  try {
    value();
    ws();
    if (i < text.length) fail(`unexpected ${JSON.stringify(text[i])} after the end of the JSON value`);
    return undefined;
  } catch (e) {
    if (!(e instanceof ScanError)) throw e;
    const before = text.slice(0, e.offset);
    const line = before.split('\n').length;
    const column = e.offset - (before.lastIndexOf('\n') + 1) + 1;
    return { line, column, message: e.message };
  }
}

class ScanError extends Error {
  constructor(
    readonly offset: number,
    message: string,
  ) {
    super(message);
  }
}
