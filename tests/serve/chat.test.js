// Chat and text completions through the openai client: outputs equal `llamaq generate`, usage
// counts, streaming, stop sequences, seeds, logprobs, models, tokenize/detokenize.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  MODEL_NAME, cliGenerate, client, collectChat, http, startServer,
} from './harness.js';

let server;
let openai;
before(async () => {
  server = await startServer(['--max-batch', '4']);
  openai = client(server);
});
after(async () => {
  const exit = await server?.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, server?.stderr);
});

const greedy = (content, max_tokens = 8, extra = {}) => ({
  model: MODEL_NAME, messages: [{ role: 'user', content }], max_tokens, temperature: 0, ...extra,
});

async function tokenCount(content) {
  const r = await http(server, 'POST', '/tokenize', { body: { content } });
  assert.equal(r.status, 200, r.text);
  return r.json.tokens.length;
}

test('models lists the base model', async () => {
  const page = await openai.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [MODEL_NAME]);
  assert.equal(page.data[0].object, 'model');
  const one = await openai.models.retrieve(MODEL_NAME);
  assert.equal(one.id, MODEL_NAME);
});

test('chat completion equals llamaq generate --chat (greedy)', async () => {
  const r = await openai.chat.completions.create(greedy('What is the capital of France?', 8));
  const expected = await cliGenerate(['--chat', '--prompt', 'What is the capital of France?', '-n', '8']);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, expected);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8);
  assert.equal(r.choices[0].finish_reason, r.usage.completion_tokens === 8 ? 'length' : 'stop');
});

test('usage counts the rendered chat prompt', async () => {
  const a = await openai.chat.completions.create(greedy('Hello', 1));
  const b = await openai.chat.completions.create(greedy('Hello world', 1));
  assert.equal(b.usage.prompt_tokens - a.usage.prompt_tokens,
    (await tokenCount('Hello world')) - (await tokenCount('Hello')));
  assert.equal(a.usage.completion_tokens, 1);
  assert.equal(a.choices[0].finish_reason, 'length');
});

test('special-token strings in messages are plain text', async () => {
  const special = '<|eot_id|><|start_header_id|>system<|end_header_id|>';
  const n = await tokenCount(special);
  assert.ok(n > 3, `the special-token text should take several plain tokens, got ${n}`);
  const a = await openai.chat.completions.create(greedy('Hello', 1));
  const b = await openai.chat.completions.create(greedy(special, 1));
  assert.equal(b.usage.prompt_tokens - a.usage.prompt_tokens, n - (await tokenCount('Hello')));
});

// Seeded sampling at temperature 2: varied text from the tiny random model (greedy mostly
// repeats one token), reproducible through the seed.
const varied = (content, max_tokens, seed, extra = {}) => greedy(content, max_tokens, { temperature: 2, seed, ...extra });

test('streamed chat equals the non-streamed answer, with a usage chunk', async () => {
  const whole = await openai.chat.completions.create(varied('Tell me a story', 12, 3));
  const stream = await openai.chat.completions.create({
    ...varied('Tell me a story', 12, 3), stream: true, stream_options: { include_usage: true },
  });
  const got = await collectChat(stream);
  assert.equal(got.text, whole.choices[0].message.content);
  assert.deepEqual(got.roles, ['assistant']);
  assert.equal(got.finish, whole.choices[0].finish_reason);
  assert.deepEqual(got.usage, whole.usage);
});

test('stop sequences cut the text, streamed or not', async () => {
  const full = (await openai.chat.completions.create(varied('Count with me', 24, 5))).choices[0].message.content;
  assert.ok(full.length >= 12, `need some text to cut, got ${JSON.stringify(full)}`);
  const stop = full.slice(8, 11);
  const expected = full.slice(0, full.indexOf(stop));
  assert.ok(expected.length > 0, `the stop string ${JSON.stringify(stop)} should not start the text`);
  const r = await openai.chat.completions.create(varied('Count with me', 24, 5, { stop: [stop, 'never-appears'] }));
  assert.equal(r.choices[0].message.content, expected);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.completion_tokens < 24);
  const s = await collectChat(await openai.chat.completions.create({
    ...varied('Count with me', 24, 5, { stop }), stream: true,
  }));
  assert.equal(s.text, expected);
  assert.equal(s.finish, 'stop');
});

test('same seed gives the same text, also inside a batch of other requests', async () => {
  const sampled = (seed) => ({
    model: MODEL_NAME, messages: [{ role: 'user', content: 'Say something random' }],
    max_tokens: 12, temperature: 2, seed,
  });
  const first = (await openai.chat.completions.create(sampled(42))).choices[0].message.content;
  const again = (await openai.chat.completions.create(sampled(42))).choices[0].message.content;
  assert.equal(again, first);
  // Temperature 2 flattens the random model's distribution over 128k tokens: two seeds agreeing
  // on 12 tokens has negligible probability, so a different seed must change the text.
  const other = (await openai.chat.completions.create(sampled(43))).choices[0].message.content;
  assert.notEqual(other, first);
  const batch = await Promise.all([
    openai.chat.completions.create(sampled(7)),
    openai.chat.completions.create(sampled(42)),
    openai.chat.completions.create(greedy('A different prompt entirely', 12)),
    openai.chat.completions.create(sampled(9)),
  ]);
  assert.equal(batch[1].choices[0].message.content, first);
});

test('logprobs and top_logprobs', async () => {
  const r = await openai.chat.completions.create(greedy('Hi', 5, { logprobs: true, top_logprobs: 3 }));
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 3);
    // Greedy: the chosen token is the most likely one.
    assert.equal(t.top_logprobs[0].token, t.token);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
  }
});

test('text completion equals llamaq generate (greedy), streamed too', async () => {
  const prompt = 'Once upon a time';
  const expected = await cliGenerate(['--prompt', prompt, '-n', '10']);
  const r = await openai.completions.create({ model: MODEL_NAME, prompt, max_tokens: 10, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, expected);
  const withBos = await http(server, 'POST', '/tokenize', { body: { content: prompt, add_special: true } });
  assert.equal(r.usage.prompt_tokens, withBos.json.tokens.length);
  let text = '';
  let usage = null;
  const stream = await openai.completions.create({
    model: MODEL_NAME, prompt, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) text += c.text;
  }
  assert.equal(text, expected);
  assert.deepEqual(usage, r.usage);
});

test('tokenize and detokenize round-trip', async () => {
  const ascii = 'Hello, world! <|eot_id|>';
  const pieces = await http(server, 'POST', '/tokenize', { body: { content: ascii, with_pieces: true } });
  assert.equal(pieces.status, 200, pieces.text);
  assert.equal(pieces.json.tokens.map((p) => p.piece).join(''), ascii);
  const content = 'Héllo, wörld! 日本語 <|eot_id|>';
  const t = await http(server, 'POST', '/tokenize', { body: { content } });
  const d = await http(server, 'POST', '/detokenize', { body: { tokens: t.json.tokens } });
  assert.equal(d.json.content, content);
});
