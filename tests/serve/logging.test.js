// The request log on stderr: exactly one line per request (whole and streamed completions, a
// 401, a 400, an unknown endpoint) with method, path, status, prompt and completion tokens and
// latency; text by default, JSON lines with --log-json. GET /health is not logged.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  MODEL_NAME, NO_EOS, client, collectChat, health, http, startServer,
} from './harness.js';

const KEY = 'sk-log-0123456789';
const auth = { Authorization: `Bearer ${KEY}` };
// EOS forbidden: each answer has exactly max_tokens tokens and ends with 'length'.
const chat = (content, max_tokens) => ({
  model: MODEL_NAME, messages: [{ role: 'user', content }], max_tokens, temperature: 0, logit_bias: NO_EOS,
});

// Starts a server, sends one request of each kind, stops it and returns its whole stderr with
// what each request should have logged.
async function logOf(args) {
  const server = await startServer(['--api-key', KEY, ...args]);
  const expected = [];
  try {
    const openai = client(server, { apiKey: KEY });
    await health(server);
    const whole = await openai.chat.completions.create(chat('Log this whole', 4));
    expected.push({ status: 200, path: '/v1/chat/completions', prompt: whole.usage.prompt_tokens, completion: 4, note: 'length' });
    const streamed = await collectChat(await openai.chat.completions.create({
      ...chat('Log this stream', 5), stream: true, stream_options: { include_usage: true },
    }));
    expected.push({ status: 200, path: '/v1/chat/completions', prompt: streamed.usage.prompt_tokens, completion: 5, note: 'length' });
    const anonymous = await http(server, 'POST', '/v1/completions', { body: { model: MODEL_NAME, prompt: 'x' } });
    assert.equal(anonymous.status, 401, anonymous.text);
    expected.push({ status: 401, path: '/v1/completions', prompt: 0, completion: 0, note: 'API key' });
    const bad = await http(server, 'POST', '/v1/chat/completions', { body: '{"model": ', headers: auth });
    assert.equal(bad.status, 400, bad.text);
    expected.push({ status: 400, path: '/v1/chat/completions', prompt: 0, completion: 0, note: 'not valid JSON' });
    const unknown = await http(server, 'GET', '/v1/nothing', { headers: auth });
    assert.equal(unknown.status, 404, unknown.text);
    expected.push({ status: 404, path: '/v1/nothing', prompt: 0, completion: 0, note: 'Unknown endpoint', method: 'GET' });
  } finally {
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
    await server.closed;
  }
  return { stderr: server.stderr, expected: expected.map((e) => ({ method: 'POST', ...e })) };
}

// Each expected request matches exactly one logged entry, and no entry is left over.
function assertOneEntryEach(entries, expected, stderr) {
  assert.equal(entries.length, expected.length, `request lines:\n${stderr}`);
  const left = [...entries];
  for (const e of expected) {
    const i = left.findIndex((l) => l.method === e.method && l.path === e.path && l.status === e.status &&
      l.prompt_tokens === e.prompt && l.completion_tokens === e.completion && l.note.includes(e.note));
    assert.ok(i >= 0, `no log line for ${JSON.stringify(e)} in:\n${stderr}`);
    assert.ok(left[i].seconds >= 0 && left[i].seconds < 120, `latency ${left[i].seconds}`);
    left.splice(i, 1);
  }
}

test('the text log has one line per request: method, path, status, tokens, latency', async () => {
  const { stderr, expected } = await logOf([]);
  const line = /^([A-Z]+) (\/\S*) (\d{3}) prompt=(\d+) completion=(\d+) (\d+\.\d{3})s(?: (.*))?$/;
  const lines = stderr.split('\n').filter((l) => /^[A-Z]+ \//.test(l));
  const entries = lines.map((l) => {
    const m = line.exec(l);
    assert.ok(m, `malformed log line: ${l}`);
    return {
      method: m[1], path: m[2], status: Number(m[3]), prompt_tokens: Number(m[4]),
      completion_tokens: Number(m[5]), seconds: Number(m[6]), note: m[7] ?? '',
    };
  });
  assertOneEntryEach(entries, expected, stderr);
  assert.doesNotMatch(stderr, /^\{/m, 'no JSON lines without --log-json');
});

test('--log-json writes one JSON object per request with typed fields', async () => {
  const { stderr, expected } = await logOf(['--log-json']);
  const entries = stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  for (const e of entries) {
    assert.equal(typeof e.method, 'string');
    assert.equal(typeof e.path, 'string');
    assert.ok(Number.isInteger(e.status), JSON.stringify(e));
    assert.ok(Number.isInteger(e.prompt_tokens) && Number.isInteger(e.completion_tokens), JSON.stringify(e));
    assert.equal(typeof e.seconds, 'number');
    assert.equal(e.remote, '127.0.0.1');
    assert.equal(typeof e.note, 'string');
    assert.equal(e.model, e.status === 200 ? MODEL_NAME : '');
  }
  assertOneEntryEach(entries, expected, stderr);
  assert.doesNotMatch(stderr, /^[A-Z]+ \/\S* \d{3} prompt=/m, 'no text request lines with --log-json');
});
