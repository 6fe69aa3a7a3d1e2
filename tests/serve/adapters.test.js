// LoRA adapters by name: --lora NAME=DIR serves the adapter as model NAME next to the base; each
// answer equals `llamaq generate` with (or without) --lora, also when both run concurrently.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { MODEL_NAME, cliGenerate, client, startServer, trainAdapter } from './harness.js';

let adapter;
let server;
let openai;
before(async () => {
  adapter = await trainAdapter();
  server = await startServer(['--lora', `tuned=${adapter.dir}`, '--max-batch', '4']);
  openai = client(server);
});
after(async () => {
  const exit = await server?.stop();
  adapter?.remove();
  assert.deepEqual(exit, { code: 0, signal: null }, server?.stderr);
});

const QUESTION = 'What is the capital of France?';
const greedy = (model) => ({
  model, messages: [{ role: 'user', content: QUESTION }], max_tokens: 8, temperature: 0,
  logprobs: true,
});

test('models lists the base model and the adapter', async () => {
  const ids = (await openai.models.list()).data.map((m) => m.id);
  assert.deepEqual(ids, [MODEL_NAME, 'tuned']);
});

test('model selects base or adapter; each equals llamaq generate', async () => {
  const [base, tuned] = await Promise.all([
    openai.chat.completions.create(greedy(MODEL_NAME)),
    openai.chat.completions.create(greedy('tuned')),
  ]);
  const cliArgs = ['--chat', '--prompt', QUESTION, '-n', '8'];
  assert.equal(base.choices[0].message.content, await cliGenerate(cliArgs));
  assert.equal(tuned.choices[0].message.content, await cliGenerate([...cliArgs, '--lora', adapter.dir]));
  assert.equal(tuned.model, 'tuned');
  // The adapter changes the distribution: the first token's log-probability differs.
  const lp = (r) => r.choices[0].logprobs.content[0].top_logprobs;
  assert.notDeepEqual(base.choices[0].logprobs.content[0], tuned.choices[0].logprobs.content[0]);
  assert.equal(lp(base).length, 0);
});

test('an unknown adapter name is 404', async () => {
  await assert.rejects(openai.chat.completions.create(greedy('other')),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
});
