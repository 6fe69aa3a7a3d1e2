// A bounded load test: 200 requests (chat and completions, streamed and not) from 16 concurrent
// clients. No errors, every answer complete, and afterwards the server is idle with every KV
// block free and its resident memory back near the level after a warm-up round.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  MODEL_NAME, NO_EOS, client, collectChat, residentBytes, startServer, waitForHealth,
} from './harness.js';

const REQUESTS = Number(process.env.LLAMAQ_LOAD_REQUESTS ?? 200);
const CLIENTS = Number(process.env.LLAMAQ_LOAD_CLIENTS ?? 16);
// Allocator caches, thread stacks and arenas mostly settle during the warm-up; what remains varied
// from 2 to 19 MiB between runs of an unchanged build on the 2-core CI machine (glibc's
// per-thread arenas of the 16 connection threads). KV blocks are checked exactly through
// /health (every block free); this bound catches per-request buffers that are never freed: a
// request's logits row alone is 0.5 MiB, 100 MiB over 200 requests.
const RSS_SLACK_BYTES = 48 << 20;

// EOS is forbidden, so every request generates exactly its max_tokens.
const maxTokens = (i) => 8 + (i % 5) * 6;

async function one(openai, i) {
  const max_tokens = maxTokens(i);
  const seed = i;
  const kind = i % 4;
  if (kind === 0 || kind === 1) {
    const body = {
      model: MODEL_NAME, messages: [{ role: 'user', content: `Request ${i}: tell me something.` }],
      max_tokens, temperature: 0.8, seed, logit_bias: NO_EOS,
    };
    if (kind === 0) {
      const r = await openai.chat.completions.create(body);
      return r.usage.completion_tokens;
    }
    const s = await collectChat(await openai.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }));
    assert.ok(s.finish, `request ${i} ended without a finish reason`);
    return s.usage.completion_tokens;
  }
  const body = { model: MODEL_NAME, prompt: `Item ${i} of the list is`, max_tokens, temperature: 0.8, seed, logit_bias: NO_EOS };
  if (kind === 2) return (await openai.completions.create(body)).usage.completion_tokens;
  let tokens = 0;
  for await (const chunk of await openai.completions.create({ ...body, stream: true, stream_options: { include_usage: true } })) {
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
  }
  return tokens;
}

async function round(openai, count, clients) {
  let next = 0;
  let tokens = 0;
  const worker = async () => {
    while (next < count) {
      const got = await one(openai, next++);  // (not `tokens += await`: that reads tokens first)
      tokens += got;
    }
  };
  await Promise.all(Array.from({ length: clients }, worker));
  return tokens;
}

const idle = (h) => h.requests_active === 0 && h.requests_queued === 0 && h.kv_free_tokens === h.kv_total_tokens;

test(`load: ${REQUESTS} requests from ${CLIENTS} concurrent clients`, async () => {
  const server = await startServer(['--max-batch', '8', '--max-queue', '32', '--ctx', '512']);
  try {
    const openai = client(server);
    await round(openai, 2 * CLIENTS, CLIENTS);  // warm-up: threads, arenas, caches
    await waitForHealth(server, idle, 'idle after the warm-up');
    const before = residentBytes(server.proc.pid);
    const start = performance.now();
    const tokens = await round(openai, REQUESTS, CLIENTS);
    const seconds = (performance.now() - start) / 1000;
    const h = await waitForHealth(server, idle, 'idle after the load');
    const after = residentBytes(server.proc.pid);
    const mib = (b) => (b / (1 << 20)).toFixed(1);
    console.log(`load: ${REQUESTS} requests, ${CLIENTS} clients: ${(REQUESTS / seconds).toFixed(2)} requests/s, ` +
      `${(tokens / seconds).toFixed(1)} completion tokens/s (${tokens} tokens in ${seconds.toFixed(2)} s); ` +
      `RSS ${mib(before)} MiB before, ${mib(after)} MiB after; KV free ${h.kv_free_tokens}/${h.kv_total_tokens}`);
    let expected = 0;
    for (let i = 0; i < REQUESTS; ++i) expected += maxTokens(i);
    assert.equal(tokens, expected, 'every request generated its whole budget');
    assert.ok(after <= before + RSS_SLACK_BYTES, `RSS grew from ${mib(before)} to ${mib(after)} MiB`);
    assert.doesNotMatch(server.stderr, / (4\d\d|5\d\d) prompt=/, 'no request failed');
  } finally {
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
  }
});
