#include "model.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "corpus.h"
#include "trident/parallel/tensor_parallel.h"

namespace lm {
namespace {

uint64_t NameHash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// A parameter slice rows [r0, r0+rows) x cols [c0, c0+cols) of a global [R, C] tensor (a
// vector is a [1, C] tensor), filled with scale * U[-1, 1) of a hash of its global index
// (scale 0: zeros).
Param MakeParam(std::string name, std::vector<int64_t> global_shape, int64_t r0, int64_t rows,
                int64_t c0, int64_t cols, bool replicated, uint64_t seed, float scale) {
  Param p;
  p.name = std::move(name);
  p.global_shape = global_shape;
  const bool matrix = global_shape.size() == 2;
  const int64_t global_cols = matrix ? global_shape[1] : global_shape[0];
  p.offset = matrix ? std::vector<int64_t>{r0, c0} : std::vector<int64_t>{c0};
  p.shape = matrix ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{cols};
  p.tp_replicated = replicated;
  p.value.assign(static_cast<size_t>(rows * cols), 0.0f);
  p.grad.assign(p.value.size(), 0.0f);
  if (scale != 0.0f) {
    const uint64_t id = Hash(seed, NameHash(p.name));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const auto global = static_cast<uint64_t>((r0 + r) * global_cols + (c0 + c));
        p.value[r * cols + c] = scale * UniformFromHash(Hash(id, global));
      }
    }
  }
  return p;
}

// C[m,n] (+)= A[m,k] B[k,n], with either operand transposed as stored; row-major.
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, const float* a, const float* b,
          float beta, float* c) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a, trans_a ? m : k, b,
              trans_b ? k : n, beta, c, n);
}

void AddColumnSums(const float* x, int rows, int cols, float* out) {
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) out[c] += x[r * cols + c];
  }
}

}  // namespace

Chunk::Chunk(const ModelConfig& config, const Placement& placement, trident::Communicator* tp)
    : config_(config), placement_(placement), tp_(tp),
      ffn_local_(config.ffn / placement.tp_size) {
  const int h = config.hidden();
  const int f = config.ffn;
  const int fl = ffn_local_;
  const int c0 = placement.tp_rank * fl;
  const uint64_t seed = config.seed;
  if (placement.has_embedding) {
    embedding_ = std::make_unique<Param>(
        MakeParam("embedding", {config.vocab, config.embed}, 0, config.vocab, 0, config.embed,
                  true, seed, 1.0f));
  }
  const float w1_scale = 1.0f / std::sqrt(static_cast<float>(h));
  const float w2_scale =
      1.0f / std::sqrt(static_cast<float>(f)) / std::sqrt(static_cast<float>(config.layers));
  for (int l = placement.first_layer; l < placement.first_layer + placement.num_layers; ++l) {
    const std::string prefix = absl::StrCat("block", l, ".");
    blocks_.push_back(Block{
        MakeParam(prefix + "w1", {h, f}, 0, h, c0, fl, false, seed, w1_scale),
        MakeParam(prefix + "b1", {f}, 0, 1, c0, fl, false, seed, 0.0f),
        MakeParam(prefix + "w2", {f, h}, c0, fl, 0, h, false, seed, w2_scale),
        MakeParam(prefix + "b2", {h}, 0, 1, 0, h, true, seed, 0.0f),
    });
  }
  if (placement.has_head) {
    head_w_ = std::make_unique<Param>(MakeParam("head.w", {h, config.vocab}, 0, h, 0,
                                                config.vocab, true, seed, w1_scale));
    head_b_ = std::make_unique<Param>(
        MakeParam("head.b", {config.vocab}, 0, 1, 0, config.vocab, true, seed, 0.0f));
  }
}

std::vector<Param*> Chunk::params() {
  std::vector<Param*> out;
  if (embedding_) out.push_back(embedding_.get());
  for (Block& b : blocks_) {
    out.insert(out.end(), {&b.w1, &b.b1, &b.w2, &b.b2});
  }
  if (head_w_) out.insert(out.end(), {head_w_.get(), head_b_.get()});
  return out;
}

void Chunk::ZeroGrads() {
  for (Param* p : params()) std::fill(p->grad.begin(), p->grad.end(), 0.0f);
}

absl::Status Chunk::TpAllReduce(std::vector<float>& buf, bool forward) {
  if (placement_.tp_size == 1) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  trident::Tensor t = trident::Tensor::Of(buf.data(), static_cast<int64_t>(buf.size()));
  absl::Status s = forward ? trident::tp::RowParallelForward(*tp_, t)
                           : trident::tp::ColumnParallelBackward(*tp_, t);
  tp_comm_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::steady_clock::now() - start)
                     .count();
  return s;
}

absl::Status Chunk::Forward(int n, const uint8_t* tokens, const float* input,
                            const uint8_t* targets, float* output, double* loss_sum,
                            float grad_scale, Stash* stash) {
  const int h = config_.hidden();
  const int fl = ffn_local_;
  const int e = config_.embed;
  std::vector<float> x(static_cast<size_t>(n) * h);
  if (embedding_) {
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k < config_.context; ++k) {
        const float* row = embedding_->value.data() + tokens[i * config_.context + k] * e;
        std::copy(row, row + e, x.data() + static_cast<size_t>(i) * h + k * e);
      }
    }
  } else {
    std::copy(input, input + x.size(), x.begin());
  }
  if (stash != nullptr) {
    stash->n = n;
    if (embedding_) stash->tokens.assign(tokens, tokens + static_cast<size_t>(n) * config_.context);
    stash->x.assign(blocks_.size(), {});
    stash->u.assign(blocks_.size(), {});
    stash->a.assign(blocks_.size(), {});
  }
  std::vector<float> u(static_cast<size_t>(n) * fl), a(u.size()), z(x.size());
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = blocks_[l];
    Gemm(false, false, n, fl, h, x.data(), b.w1.value.data(), 0.0f, u.data());
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < fl; ++j) {
        float& v = u[static_cast<size_t>(i) * fl + j];
        v += b.b1.value[j];
        a[static_cast<size_t>(i) * fl + j] = v > 0.0f ? v : 0.0f;
      }
    }
    Gemm(false, false, n, h, fl, a.data(), b.w2.value.data(), 0.0f, z.data());
    if (absl::Status s = TpAllReduce(z, /*forward=*/true); !s.ok()) return s;
    if (stash != nullptr) {
      stash->x[l] = x;
      stash->u[l] = u;
      stash->a[l] = a;
    }
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < h; ++j) {
        const size_t k = static_cast<size_t>(i) * h + j;
        x[k] = x[k] + (z[k] + b.b2.value[j]);
      }
    }
  }
  if (!head_w_) {
    std::copy(x.begin(), x.end(), output);
    return absl::OkStatus();
  }
  const int vocab = config_.vocab;
  std::vector<float> probs(static_cast<size_t>(n) * vocab);
  Gemm(false, false, n, vocab, h, x.data(), head_w_->value.data(), 0.0f, probs.data());
  double loss = 0.0;
  for (int i = 0; i < n; ++i) {
    float* row = probs.data() + static_cast<size_t>(i) * vocab;
    float max = -INFINITY;
    for (int j = 0; j < vocab; ++j) {
      row[j] += head_b_->value[j];
      max = std::max(max, row[j]);
    }
    double sum = 0.0;
    for (int j = 0; j < vocab; ++j) {
      row[j] = std::exp(row[j] - max);
      sum += row[j];
    }
    const auto inv = static_cast<float>(1.0 / sum);
    for (int j = 0; j < vocab; ++j) row[j] *= inv;
    loss -= std::log(std::max(row[targets[i]], 1e-30f));
  }
  *loss_sum += loss;
  if (stash != nullptr) {
    stash->targets.assign(targets, targets + n);
    stash->head_x = std::move(x);
    stash->probs = std::move(probs);
    stash->dlogits.assign(stash->probs.size(), 0.0f);
    for (size_t k = 0; k < stash->probs.size(); ++k) stash->dlogits[k] = stash->probs[k];
    for (int i = 0; i < n; ++i) stash->dlogits[static_cast<size_t>(i) * vocab + targets[i]] -= 1.0f;
    for (float& g : stash->dlogits) g *= grad_scale;
  }
  return absl::OkStatus();
}

absl::Status Chunk::BackwardInput(Stash& s, const float* grad_output, float* grad_input) {
  const int n = s.n;
  const int h = config_.hidden();
  const int fl = ffn_local_;
  std::vector<float> g(static_cast<size_t>(n) * h);
  if (head_w_) {
    Gemm(false, true, n, h, config_.vocab, s.dlogits.data(), head_w_->value.data(), 0.0f,
         g.data());
  } else {
    std::copy(grad_output, grad_output + g.size(), g.begin());
  }
  s.dy.assign(blocks_.size(), {});
  s.du.assign(blocks_.size(), {});
  std::vector<float> du(static_cast<size_t>(n) * fl), dx(g.size());
  for (size_t l = blocks_.size(); l-- > 0;) {
    Block& b = blocks_[l];
    Gemm(false, true, n, fl, h, g.data(), b.w2.value.data(), 0.0f, du.data());
    for (size_t k = 0; k < du.size(); ++k) {
      if (s.u[l][k] <= 0.0f) du[k] = 0.0f;
    }
    Gemm(false, true, n, h, fl, du.data(), b.w1.value.data(), 0.0f, dx.data());
    if (absl::Status st = TpAllReduce(dx, /*forward=*/false); !st.ok()) return st;
    s.dy[l] = g;
    s.du[l] = du;
    for (size_t k = 0; k < g.size(); ++k) g[k] += dx[k];
  }
  if (embedding_) {
    s.dx0 = std::move(g);
  } else {
    std::copy(g.begin(), g.end(), grad_input);
  }
  return absl::OkStatus();
}

void Chunk::BackwardWeight(Stash& s) {
  const int n = s.n;
  const int h = config_.hidden();
  const int fl = ffn_local_;
  if (head_w_) {
    Gemm(true, false, h, config_.vocab, n, s.head_x.data(), s.dlogits.data(), 1.0f,
         head_w_->grad.data());
    AddColumnSums(s.dlogits.data(), n, config_.vocab, head_b_->grad.data());
  }
  for (size_t l = blocks_.size(); l-- > 0;) {
    Block& b = blocks_[l];
    Gemm(true, false, fl, h, n, s.a[l].data(), s.dy[l].data(), 1.0f, b.w2.grad.data());
    AddColumnSums(s.dy[l].data(), n, h, b.b2.grad.data());
    Gemm(true, false, h, fl, n, s.x[l].data(), s.du[l].data(), 1.0f, b.w1.grad.data());
    AddColumnSums(s.du[l].data(), n, fl, b.b1.grad.data());
  }
  if (embedding_) {
    const int e = config_.embed;
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k < config_.context; ++k) {
        float* row = embedding_->grad.data() + s.tokens[i * config_.context + k] * e;
        const float* g = s.dx0.data() + static_cast<size_t>(i) * h + k * e;
        for (int j = 0; j < e; ++j) row[j] += g[j];
      }
    }
  }
  s = Stash{};
}

}  // namespace lm
