// Shared pieces of the llamaq serve end-to-end tests: start the real binary on 127.0.0.1 with an
// ephemeral port (the server prints it), make openai clients for it, and run the CLI for
// reference outputs. CTest passes LLAMAQ_BIN and LLAMAQ_TEST_DATA.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import OpenAI from 'openai';

const execFileAsync = promisify(execFile);

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run these tests through ctest, or set it by hand)`);
  return value;
}

export const BIN = required('LLAMAQ_BIN');
export const DATA = required('LLAMAQ_TEST_DATA');
export const MODEL = path.join(DATA, 'models', 'tiny-llama3-vocab');
export const MODEL_NAME = 'tiny-llama3-vocab';
// The end-of-turn and end-of-text ids of the Llama 3 vocabulary: a bias of -100 keeps the tiny
// random model from ending a generation that a test needs to stay running.
export const NO_EOS = { 128001: -100, 128008: -100, 128009: -100 };
// Startup (model load) and whole-request budgets, generous for a loaded 2-core machine.
export const START_TIMEOUT_MS = 120_000;

// Starts `llamaq serve` and resolves once it logs that it is ready.
export async function startServer(args = [], { env = process.env } = {}) {
  const proc = spawn(BIN, ['serve', '--model', MODEL, '--host', '127.0.0.1', '--port', '0', ...args],
    { stdio: ['ignore', 'ignore', 'pipe'], env });
  const server = { proc, stderr: '', exit: null };
  server.exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    server.exit = { code, signal };
    resolve(server.exit);
  }));
  // Resolves once stderr is closed too: server.stderr then holds everything the server wrote.
  server.closed = new Promise((resolve) => proc.on('close', resolve));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server not ready after ${START_TIMEOUT_MS} ms:\n${server.stderr}`)),
      START_TIMEOUT_MS);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (text) => {
      server.stderr += text;
      const ready = /serve: ready: .* on http:\/\/127\.0\.0\.1:(\d+)/.exec(server.stderr);
      if (ready) {
        clearTimeout(timer);
        resolve(Number(ready[1]));
      }
    });
    server.exited.then((e) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${JSON.stringify(e)}) before it was ready:\n${server.stderr}`));
    });
  });
  server.port = port;
  server.url = `http://127.0.0.1:${port}`;
  // SIGTERM and the exit status.
  server.stop = async () => {
    if (server.exit) return server.exit;
    proc.kill('SIGTERM');
    return server.exited;
  };
  return server;
}

export function client(server, { apiKey = 'unused', ...options } = {}) {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 120_000, ...options });
}

// A raw HTTP call for what the openai client does not expose (bad bodies, headers, /health).
export async function http(server, method, route, { body, headers = {} } = {}) {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: body === undefined ? headers : { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON: the test looks at text */ }
  return { status: res.status, headers: res.headers, text, json };
}

export async function health(server) {
  return (await http(server, 'GET', '/health')).json;
}

// Polls /health until `predicate` holds (the server finishes cancelled work asynchronously).
export async function waitForHealth(server, predicate, what, timeoutMs = 60_000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await health(server);
    if (last && predicate(last)) return last;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`timed out waiting for ${what}; last /health: ${JSON.stringify(last)}`);
}

// Waits until the server's stderr matches `pattern` (a request is logged when its answer is
// complete, which a client may see a moment before the line arrives).
export async function waitForLog(server, pattern, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  while (!pattern.test(server.stderr)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${pattern} in the server log:\n${server.stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Text `llamaq generate` prints for a prompt (greedy), the reference for the server's output.
export async function cliGenerate(args) {
  const { stdout } = await execFileAsync(BIN, ['generate', '--model', MODEL, '--temp', '0', ...args],
    { maxBuffer: 1 << 24 });
  return stdout.replace(/\n$/, '');
}

// A LoRA adapter for the tiny model, trained for a few steps by `llamaq finetune`.
export async function trainAdapter() {
  const dir = mkdtempSync(path.join(tmpdir(), 'llamaq-serve-lora-'));
  await execFileAsync(BIN, ['finetune', '--model', MODEL, '--data', path.join(DATA, 'train', 'tiny-chat.jsonl'),
    '--steps', '4', '--micro-batch', '2', '--lr', '1e-2', '--lora-r', '4', '--seed', '5',
    '--out', path.join(dir, 'adapter')], { maxBuffer: 1 << 24 });
  return { dir: path.join(dir, 'adapter'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

// Resident memory of a process in bytes (Linux).
export function residentBytes(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) * 1024;
}

// Collects a streamed chat completion: text, chunks, finish reason, usage.
export async function collectChat(stream) {
  const out = { text: '', chunks: 0, finish: null, usage: null, roles: [] };
  for await (const chunk of stream) {
    out.chunks += 1;
    if (chunk.usage) out.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta?.role) out.roles.push(choice.delta.role);
      out.text += choice.delta?.content ?? '';
      if (choice.finish_reason) out.finish = choice.finish_reason;
    }
  }
  return out;
}
