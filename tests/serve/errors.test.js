// Authentication, request validation and limits: 401, 400s with OpenAI error objects, 404 for an
// unknown model, 413 for a body over the cap; unknown fields are ignored.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { MODEL_NAME, client, http, startServer } from './harness.js';

const KEY = 'sk-test-0123456789';
let server;
let openai;
before(async () => {
  server = await startServer(['--ctx', '256', '--max-body-mb', '1'], {
    env: { ...process.env, LLAMAQ_API_KEY: KEY },
  });
  openai = client(server, { apiKey: KEY });
});
after(async () => {
  const exit = await server?.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, server?.stderr);
});

const auth = { Authorization: `Bearer ${KEY}` };
const chat = (extra) => ({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, ...extra });

async function post(route, body, headers = auth) {
  return http(server, 'POST', route, { body, headers });
}

function assertError(r, status, pattern, param) {
  assert.equal(r.status, status, r.text);
  assert.equal(typeof r.json.error.message, 'string');
  assert.match(r.json.error.message, pattern);
  assert.ok(r.json.error.type);
  if (param !== undefined) assert.equal(r.json.error.param, param);
}

test('a missing or wrong API key is 401; /health needs none', async () => {
  const wrong = client(server, { apiKey: 'sk-wrong' });
  await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  assertError(await http(server, 'GET', '/v1/models'), 401, /API key/);
  assertError(await post('/v1/chat/completions', chat(), { Authorization: `Bearer ${KEY}x` }), 401, /API key/);
  assert.equal((await http(server, 'GET', '/health')).status, 200);
  const ok = await openai.chat.completions.create(chat());
  assert.equal(ok.choices.length, 1);
});

test('invalid JSON and non-object bodies are 400', async () => {
  assertError(await post('/v1/chat/completions', '{"model": '), 400, /not valid JSON/);
  assertError(await post('/v1/chat/completions', '[1, 2]'), 400, /JSON object/);
  assertError(await post('/v1/completions', '"text"'), 400, /JSON object/);
});

test('wrong types and out-of-range values are 400 naming the field', async () => {
  assertError(await post('/v1/chat/completions', chat({ temperature: 'hot' })), 400, /temperature/, 'temperature');
  assertError(await post('/v1/chat/completions', chat({ temperature: 3 })), 400, /temperature/, 'temperature');
  assertError(await post('/v1/chat/completions', chat({ max_tokens: -5 })), 400, /max_tokens/, 'max_tokens');
  assertError(await post('/v1/chat/completions', chat({ max_tokens: 1.5 })), 400, /integer/, 'max_tokens');
  assertError(await post('/v1/chat/completions', chat({ messages: 'Hi' })), 400, /messages/, 'messages');
  assertError(await post('/v1/chat/completions', chat({ messages: [{ role: 'wizard', content: 'x' }] })), 400,
    /role/, 'messages[0].role');
  assertError(await post('/v1/chat/completions', chat({ n: 2 })), 400, /n = 1/, 'n');
  assertError(await post('/v1/chat/completions', chat({ stop: ['a', 'b', 'c', 'd', 'e'] })), 400, /stop/, 'stop');
  assertError(await post('/v1/chat/completions', chat({ top_logprobs: 3 })), 400, /logprobs/);
  assertError(await post('/v1/completions', { model: MODEL_NAME, prompt: { a: 1 } }), 400, /prompt/, 'prompt');
  await assert.rejects(openai.chat.completions.create(chat({ seed: 'x' })),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400);
});

test('a prompt or max_tokens over the context is 400 with the numbers', async () => {
  const huge = await post('/v1/chat/completions', chat({ max_tokens: 1_000_000_000 }));
  assertError(huge, 400, /256 tokens.*1000000000 completion tokens/);
  assert.equal(huge.json.error.code, 'context_length_exceeded');
  const long = await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'word '.repeat(400) }] }));
  assertError(long, 400, /maximum context length is 256 tokens, but the prompt has \d+ tokens/);
  assertError(await post('/v1/chat/completions', chat({ max_tokens: 2 ** 62 })), 400, /max_tokens/);
});

test('an unknown model is 404 model_not_found', async () => {
  await assert.rejects(openai.chat.completions.create(chat({ model: 'gpt-9' })),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
});

test('unknown fields are ignored, as OpenAI does', async () => {
  const r = await post('/v1/chat/completions', chat({ frobnicate: { deep: [1, 2] }, service_tier: 'auto' }));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.object, 'chat.completion');
});

test('a body over --max-body-mb is 413; deep nesting is 400', async () => {
  const big = await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x'.repeat(2 << 20) }] }));
  assert.equal(big.status, 413);
  const deep = '{"a":' + '['.repeat(10_000) + ']'.repeat(10_000) + '}';
  assertError(await post('/v1/chat/completions', deep), 400, /nests deeper/);
});

test('unknown endpoints are 404 with an error object', async () => {
  assertError(await http(server, 'GET', '/v1/nothing', { headers: auth }), 404, /Unknown endpoint/);
});
