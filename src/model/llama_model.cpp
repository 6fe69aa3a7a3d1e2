#include "model/llama_model.h"

#include "core/error.h"
#include "model/rope.h"

namespace llamaq {
namespace {

LinearWeight upload(Backend& backend, const LinearWeight& w, LoraBranches branches) {
  LinearWeight out = backend.upload_linear(w);
  if (w.lora && branches == LoraBranches::Upload) {
    auto lora = std::make_shared<LoraWeights>(*w.lora);
    lora->a = backend.upload(w.lora->a);
    lora->b_scaled = backend.upload(w.lora->b_scaled);
    lora->b = backend.upload(w.lora->b);
    out.lora = std::move(lora);
  }
  return out;
}

}  // namespace

LlamaWeights upload_weights(Backend& backend, const LlamaWeights& host, LoraBranches lora) {
  LlamaWeights w;
  // A tied head streams the whole table every step: then it must be where the head runs.
  const bool tied = host.lm_head.weight.data() == host.embed_tokens.data();
  w.embed_tokens =
      tied ? backend.upload(host.embed_tokens) : backend.upload_embedding(host.embed_tokens);
  for (const LayerWeights& h : host.layers) {
    LayerWeights l;
    l.input_norm = backend.upload(h.input_norm);
    l.q_proj = upload(backend, h.q_proj, lora);
    l.k_proj = upload(backend, h.k_proj, lora);
    l.v_proj = upload(backend, h.v_proj, lora);
    l.o_proj = upload(backend, h.o_proj, lora);
    l.post_attention_norm = backend.upload(h.post_attention_norm);
    l.gate_proj = upload(backend, h.gate_proj, lora);
    l.up_proj = upload(backend, h.up_proj, lora);
    l.down_proj = upload(backend, h.down_proj, lora);
    w.layers.push_back(std::move(l));
  }
  w.final_norm = backend.upload(host.final_norm);
  w.lm_head = tied ? LinearWeight::dense(w.embed_tokens) : upload(backend, host.lm_head, lora);
  return w;
}

// Scratch activations for one forward call of n tokens.
struct LlamaModel::Activations {
  Activations(Backend& b, const LlamaConfig& c, int64_t n)
      : x(b.alloc(DType::F32, {n, c.hidden_size})),
        normed(b.alloc(DType::F32, {n, c.hidden_size})),
        q(b.alloc(DType::F32, {n, c.num_attention_heads, c.head_dim})),
        k(b.alloc(DType::F32, {n, c.num_key_value_heads, c.head_dim})),
        v(b.alloc(DType::F32, {n, c.num_key_value_heads, c.head_dim})),
        attn(b.alloc(DType::F32, {n, c.q_dim()})),
        proj(b.alloc(DType::F32, {n, c.hidden_size})),
        gate(b.alloc(DType::F32, {n, c.intermediate_size})),
        up(b.alloc(DType::F32, {n, c.intermediate_size})) {}
  Tensor x;       // [n, hidden] residual stream
  Tensor normed;  // [n, hidden]
  Tensor q;       // [n, H, D]
  Tensor k;       // [n, Hkv, D]
  Tensor v;       // [n, Hkv, D]
  Tensor attn;    // [n, H*D]
  Tensor proj;    // [n, hidden] output of o_proj / down_proj
  Tensor gate;    // [n, intermediate]
  Tensor up;      // [n, intermediate]
};

LlamaModel::LlamaModel(const LlamaConfig& config, const LlamaWeights& host_weights,
                       Backend& backend)
    : config_(config), backend_(backend), weights_(upload_weights(backend, host_weights)) {
  const std::vector<float> inv_freq = rope_inv_freq(config_);
  inv_freq_ = backend_.alloc(DType::F32, {int64_t(inv_freq.size())});
  backend_.copy_from_host(inv_freq_, inv_freq.data());
}

// y = x W^T, plus the LoRA branch scale * (x A^T) B^T when the projection has one.
void LlamaModel::linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  backend_.linear(x, w, out);
  if (!w.lora) return;
  const int64_t n = x.dim(0);
  Tensor low_rank = backend_.alloc(DType::F32, {n, w.lora->rank()});
  Tensor delta = backend_.alloc(DType::F32, {n, w.out_features()});
  backend_.linear(x, LinearWeight::dense(w.lora->a), low_rank);
  backend_.linear(low_rank, LinearWeight::dense(w.lora->b_scaled), delta);
  Tensor out2 = out.reshaped({n, w.out_features()});
  backend_.add_inplace(out2, delta);
}

// residual += x W^T (+ the LoRA branch): one op without LoRA, else the projection and an add.
void LlamaModel::project_add(const Tensor& x, const LinearWeight& w, Tensor& residual,
                             Tensor& scratch) {
  if (!w.lora) {
    backend_.linear_add(x, w, residual, scratch);
    return;
  }
  linear(x, w, scratch);
  backend_.add_inplace(residual, scratch);
}

void LlamaModel::run_layer(int layer, Activations& act, const Tensor& positions, KvCache& cache,
                           std::span<const BatchSlice> groups) {
  const LayerWeights& w = weights_.layers[size_t(layer)];
  const int64_t n = act.x.dim(0);
  const float eps = float(config_.rms_norm_eps);
  Backend& b = backend_;

  // Without LoRA, q/k/v run as one group, gate/up with SwiGLU as one op and each residual add
  // inside its output projection (one kernel each where the backend can: CUDA decode).
  b.rmsnorm(act.x, w.input_norm, eps, act.normed);
  Tensor q2 = act.q.reshaped({n, config_.q_dim()});
  Tensor k2 = act.k.reshaped({n, config_.kv_dim()});
  Tensor v2 = act.v.reshaped({n, config_.kv_dim()});
  if (!w.q_proj.lora && !w.k_proj.lora && !w.v_proj.lora) {
    const LinearWeight* qkv[] = {&w.q_proj, &w.k_proj, &w.v_proj};
    Tensor* qkv_out[] = {&q2, &k2, &v2};
    b.linear_group(act.normed, qkv, qkv_out);
  } else {
    linear(act.normed, w.q_proj, q2);
    linear(act.normed, w.k_proj, k2);
    linear(act.normed, w.v_proj, v2);
  }
  const auto view_of = [&](const BatchSlice& s) {
    return s.table.empty() ? cache.layer_view(layer, s.seq) : cache.layer_view(layer, s.table);
  };
  if (groups.size() == 1 && groups[0].begin == 0 && groups[0].count == n) {
    // One sequence (or one decode group): rotate, store and attend over the whole batch.
    const KvLayerView kv = view_of(groups[0]);
    b.rope_kv_store(act.q, act.k, act.v, positions, inv_freq_, kv);
    b.attention(act.q, positions, kv, act.attn);
  } else {
    b.rope(act.q, positions, inv_freq_);
    b.rope(act.k, positions, inv_freq_);
    // Attention is the one step per sequence: each reads its own blocks of the cache.
    for (const BatchSlice& s : groups) {
      const KvLayerView kv = view_of(s);
      const Tensor pos = positions.slice_rows(s.begin, s.count);
      b.kv_store(act.k.slice_rows(s.begin, s.count), act.v.slice_rows(s.begin, s.count), pos, kv);
      Tensor out = act.attn.slice_rows(s.begin, s.count);
      b.attention(act.q.slice_rows(s.begin, s.count), pos, kv, out);
    }
  }
  project_add(act.attn, w.o_proj, act.x, act.proj);
  b.rmsnorm(act.x, w.post_attention_norm, eps, act.normed);
  if (!w.gate_proj.lora && !w.up_proj.lora) {
    b.linear_swiglu(act.normed, w.gate_proj, w.up_proj, act.gate, act.up);
  } else {
    linear(act.normed, w.gate_proj, act.gate);
    linear(act.normed, w.up_proj, act.up);
    b.swiglu(act.gate, act.up, act.gate);
  }
  project_add(act.gate, w.down_proj, act.x, act.proj);
}

Tensor LlamaModel::forward(KvCache& cache, int seq, std::span<const int32_t> ids, LogitsFor which) {
  const SequenceInput item{seq, ids};
  return forward_batch(cache, std::span(&item, 1), which);
}

Tensor LlamaModel::forward_batch(KvCache& cache, std::span<const SequenceInput> items,
                                 LogitsFor which) {
  if (items.empty()) fail("forward: no sequences");
  std::vector<BatchSlice> slices;
  std::vector<int32_t> host_ids, host_positions;
  for (const SequenceInput& item : items) {
    if (item.ids.empty()) fail("forward: sequence {} has no tokens", item.seq);
    for (int32_t id : item.ids) {
      if (id < 0 || id >= config_.vocab_size) {
        fail("token id {} is out of range for a vocabulary of {}", id, config_.vocab_size);
      }
    }
    const int64_t start = cache.length(item.seq);
    for (const BatchSlice& s : slices) {
      if (s.seq == item.seq) fail("forward: sequence {} appears twice in one batch", item.seq);
    }
    slices.push_back({item.seq, int64_t(host_ids.size()), int64_t(item.ids.size()), Tensor()});
    host_ids.insert(host_ids.end(), item.ids.begin(), item.ids.end());
    for (size_t i = 0; i < item.ids.size(); ++i)
      host_positions.push_back(int32_t(start + int64_t(i)));
  }
  for (const SequenceInput& item : items)
    cache.reserve(item.seq, int64_t(item.ids.size()));
  Tensor logits;
  if (graph_eligible(items, which)) {
    logits = decode_with_graph(cache, slices, host_ids, host_positions);
  }
  if (logits.empty()) {  // no graph
    const int64_t n = int64_t(host_ids.size());
    Tensor positions = backend_.alloc(DType::I32, {n});
    backend_.copy_from_host(positions, host_positions.data());
    Tensor token_ids = backend_.alloc(DType::I32, {n});
    backend_.copy_from_host(token_ids, host_ids.data());
    if (which != LogitsFor::None) {
      const int64_t rows = which == LogitsFor::LastToken ? int64_t(slices.size()) : n;
      logits = backend_.alloc(DType::F32, {rows, config_.vocab_size});
    }
    const std::vector<BatchSlice> groups = attention_groups(cache, slices);
    run_forward(cache, token_ids, positions, slices, groups, which, logits);
  }
  for (const SequenceInput& item : items)
    cache.advance(item.seq, int64_t(item.ids.size()));
  return logits;
}

std::vector<LlamaModel::BatchSlice> LlamaModel::attention_groups(
    KvCache& cache, std::span<const BatchSlice> slices) {
  std::vector<BatchSlice> groups;
  const int64_t width = cache.max_blocks_per_sequence();
  for (size_t i = 0; i < slices.size();) {
    size_t end = i;
    while (end < slices.size() && slices[end].count == 1)
      ++end;
    if (end - i < 2) {
      groups.push_back(slices[i++]);
      continue;
    }
    const int64_t run = int64_t(end - i);
    std::vector<int32_t> tables(size_t(run * width), 0);
    for (int64_t r = 0; r < run; ++r) {
      const std::span<const int32_t> blocks = cache.blocks(slices[i + size_t(r)].seq);
      std::copy(blocks.begin(), blocks.end(), tables.begin() + r * width);
    }
    Tensor table = backend_.alloc(DType::I32, {run, width});
    backend_.copy_from_host(table, tables.data());
    groups.push_back({-1, slices[i].begin, run, table});
    i = end;
  }
  return groups;
}

void LlamaModel::run_forward(KvCache& cache, const Tensor& token_ids, const Tensor& positions,
                             std::span<const BatchSlice> slices, std::span<const BatchSlice> groups,
                             LogitsFor which, Tensor& logits) {
  const int64_t n = token_ids.dim(0);
  Activations act(backend_, config_, n);
  backend_.embedding(weights_.embed_tokens, token_ids, act.x);
  for (int layer = 0; layer < int(config_.num_hidden_layers); ++layer) {
    run_layer(layer, act, positions, cache, groups);
  }
  if (which == LogitsFor::None) return;
  // LastToken: one row per sequence (its last token); AllTokens: every row.
  const float eps = float(config_.rms_norm_eps);
  const int64_t rows = logits.dim(0);
  Tensor normed = act.normed.slice_rows(0, rows);
  if (which == LogitsFor::AllTokens || rows == n) {
    backend_.rmsnorm(act.x, weights_.final_norm, eps, normed);
  } else {
    for (size_t i = 0; i < slices.size(); ++i) {
      Tensor row = normed.slice_rows(int64_t(i), 1);
      backend_.rmsnorm(act.x.slice_rows(slices[i].begin + slices[i].count - 1, 1),
                       weights_.final_norm, eps, row);
    }
  }
  backend_.linear(normed, weights_.lm_head, logits);
}

std::vector<float> LlamaModel::forward_to_host(KvCache& cache, int seq,
                                               std::span<const int32_t> ids, LogitsFor which) {
  const Tensor logits = forward(cache, seq, ids, which);
  std::vector<float> host(size_t(logits.numel()));
  backend_.copy_to_host(logits, host.data());
  return host;
}

}  // namespace llamaq
