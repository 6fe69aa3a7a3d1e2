// Continuous batching under concurrent clients: 8 streams at once, clients that abort mid-stream
// or while waiting for a whole answer (their slots and KV blocks are freed), 503 with Retry-After
// on a full queue, SIGTERM with requests in flight, and --timeout.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';
import {
  MODEL_NAME, NO_EOS, client, collectChat, http, startServer, waitForHealth, waitForLog,
} from './harness.js';

const greedy = (content, max_tokens) => ({
  model: MODEL_NAME, messages: [{ role: 'user', content }], max_tokens, temperature: 0,
});
// A stream that runs until cancelled: EOS forbidden and no max_tokens, so it may fill the whole
// context (thousands of tokens, seconds even on a fast machine; the tests cancel it long before).
const endless = (content) => ({
  model: MODEL_NAME, messages: [{ role: 'user', content }], temperature: 0, logit_bias: NO_EOS, stream: true,
});

const idle = (h) => h.requests_active === 0 && h.requests_queued === 0 && h.kv_free_tokens === h.kv_total_tokens;

test('8 concurrent streaming clients each get their own complete answer', async () => {
  const server = await startServer(['--max-batch', '4', '--max-queue', '8']);
  try {
    const openai = client(server);
    const prompts = Array.from({ length: 8 }, (_, i) => `Question number ${i}: what comes next?`);
    // Each answer alone first; in the batch each must come out the same (seeded sampling at
    // temperature 2 gives varied text, so any mix-up between sequences would show).
    const body = (p, i) => ({ ...greedy(p, 16), temperature: 2, seed: 100 + i });
    const solo = [];
    for (const [i, p] of prompts.entries()) solo.push((await openai.chat.completions.create(body(p, i))).choices[0].message.content);
    const streams = await Promise.all(prompts.map(async (p, i) => collectChat(await openai.chat.completions.create({
      ...body(p, i), stream: true, stream_options: { include_usage: true },
    }))));
    streams.forEach((s, i) => {
      assert.equal(s.text, solo[i], `stream ${i}`);
      assert.ok(s.finish === 'stop' || s.finish === 'length');
      assert.ok(s.usage.completion_tokens >= 1);
    });
    const h = await waitForHealth(server, idle, 'an idle server');
    assert.ok(h.decode_steps > 0);
  } finally {
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
  }
});

test('aborting mid-stream cancels the generation and frees its KV blocks', async () => {
  const server = await startServer(['--max-batch', '2', '--ctx', '8192']);
  try {
    const openai = client(server);
    const controller = new AbortController();
    const stream = await openai.chat.completions.create(endless('Keep talking'), { signal: controller.signal });
    let chunks = 0;
    try {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) chunks += 1;
        if (chunks === 3) controller.abort();
      }
    } catch (e) {
      // Depending on timing the client ends the iteration quietly or with its abort error.
      assert.ok(e.name === 'AbortError' || e instanceof OpenAI.APIUserAbortError, String(e));
    }
    assert.equal(chunks, 3);
    await waitForHealth(server, idle, 'the aborted request to leave the batch');
    // A stream is logged when httplib lets go of it, which may come a moment after it left the batch.
    await waitForLog(server, /POST \/v1\/chat\/completions 200 .*client disconnected \(cancelled\)/);
    // The server keeps serving.
    const r = await openai.chat.completions.create(greedy('Still there?', 3));
    assert.equal(r.choices.length, 1);
  } finally {
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
  }
});

test('a client that leaves before its whole (non-streamed) answer has its generation cancelled', async () => {
  const server = await startServer(['--max-batch', '2', '--ctx', '8192']);
  try {
    const openai = client(server);
    // Thousands of tokens, many seconds of generation: far longer than the test waits.
    const maxTokens = 8000;
    const { stream, ...whole } = endless('Tell me everything');
    const controller = new AbortController();
    const answer = openai.chat.completions.create({ ...whole, max_tokens: maxTokens }, { signal: controller.signal })
      .then(() => null, (e) => e);
    await waitForHealth(server, (h) => h.requests_active === 1 && h.generated_tokens > 0, 'the request to generate');
    controller.abort();
    const error = await answer;
    assert.ok(error instanceof OpenAI.APIUserAbortError, String(error));
    // The server notices within a fraction of a second and cancels at its next step.
    const h = await waitForHealth(server, idle, 'the abandoned request to be cancelled', 10_000);
    assert.ok(h.generated_tokens < maxTokens, `it ran to the end: ${JSON.stringify(h)}`);
    // Logged once, as nginx logs a client that closed its request: 499.
    const line = /POST \/v1\/chat\/completions 499 prompt=\d+ completion=(\d+) [\d.]+s client disconnected \(cancelled\)/;
    await waitForLog(server, line);
    assert.ok(Number(line.exec(server.stderr)[1]) < maxTokens);
    assert.equal(server.stderr.match(/POST \/v1\/chat\/completions /g).length, 1, server.stderr);
    // The server keeps serving.
    const r = await openai.chat.completions.create(greedy('Still there?', 3));
    assert.equal(r.choices.length, 1);
  } finally {
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
  }
});

test('a full queue answers 503 with Retry-After; SIGTERM ends in-flight streams with an error', async () => {
  const server = await startServer(['--max-batch', '1', '--max-queue', '1', '--drain-seconds', '0', '--ctx', '8192']);
  const openai = client(server);
  // A holds the only slot; B waits in the one queue place; C finds the queue full.
  const a = await openai.chat.completions.create(endless('First'));
  const aIter = a[Symbol.asyncIterator]();
  assert.ok((await aIter.next()).value);  // A is running
  await waitForHealth(server, (h) => h.requests_active === 1, 'A to run');
  const b = openai.chat.completions.create(endless('Second'));
  await waitForHealth(server, (h) => h.requests_queued === 1, 'B to be queued');
  const c = await http(server, 'POST', '/v1/chat/completions', { body: greedy('Third', 2) });
  assert.equal(c.status, 503, c.text);
  assert.equal(c.headers.get('retry-after'), '1');
  assert.equal(c.json.error.code, 'queue_full');
  await assert.rejects(openai.chat.completions.create(greedy('Third', 2)),
    (e) => e instanceof OpenAI.InternalServerError && e.status === 503);

  // SIGTERM: A (running) and B (queued) end with errors; the server exits with status 0.
  // Outcomes as values (an error or null), so no rejection is left unhandled meanwhile.
  const settle = (p) => p.then(() => null, (e) => e);
  const aRest = settle((async () => { for (let r = await aIter.next(); !r.done; r = await aIter.next()); })());
  const bRest = settle(b.then((stream) => collectChat(stream)));
  const exit = await server.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, server.stderr);
  for (const [name, outcome] of [['A', await aRest], ['B', await bRest]]) {
    assert.ok(outcome instanceof Error, `${name} should end with an error`);
    assert.match(outcome.message, /shutting down/, name);
  }
  assert.match(server.stderr, /serve: stopped/);
});

test('a request over --timeout is cancelled: 504 whole, an error event streamed', async () => {
  const server = await startServer(['--timeout', '0.5', '--ctx', '8192']);
  try {
    const openai = client(server);
    const { stream, ...whole } = endless('Go on forever');
    const r = await http(server, 'POST', '/v1/chat/completions', { body: whole });
    assert.equal(r.status, 504, r.text);
    assert.equal(r.json.error.code, 'timeout');
    const s = await openai.chat.completions.create(endless('And again'));
    await assert.rejects(collectChat(s), (e) => e.code === 'timeout' && /--timeout/.test(e.message));
    await waitForHealth(server, idle, 'the timed-out requests to leave the batch');
  } finally {
    assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
  }
});
