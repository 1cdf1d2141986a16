// Cut cross-entropy (Wijmans et al., ICLR 2025): the loss of a language model's next-token
// predictions and its gradient with respect to the final hidden states, computed over tiles
// of the vocabulary so that the tokens x vocabulary matrix of logits never exists.
//
// For token t with hidden state h_t (normalized, d values) and target y_t, over the output
// matrix W (vocab x d, stored quantized):
//   loss_t = logsumexp_v(W_v . h_t) - W_{y_t} . h_t
//   dloss_t/dh_t = sum_v softmax_v * W_v - W_{y_t}
// Forward: each tile's logits (n x tile) are computed, folded into a running maximum and sum
// per token, and dropped. Backward: each tile's logits are computed again from the forward's
// log-sum-exp, and rows whose softmax values are below `filter` for every token are skipped
// (the CCE paper's gradient filter: most of a large vocabulary contributes nothing visible).
// Memory: n x tile floats of logits instead of n x vocab.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/weights.h"

namespace flashlm {

class ThreadPool;

struct TiledLossOptions {
  int64_t tile = 2048;            // vocabulary rows per tile
  // Backward: skip rows whose softmax is below this for every token. The CCE paper's 2^-12
  // suits bf16 gradients; these are float: on Gemma 3 (256 tokens of Persuasion, vocabulary
  // 262,144) 2^-12 skipped 95% of the rows and moved the gradient by 7%, 1e-6 skips 72% and
  // moves it by 0.2%, at half the time of no filter (bench/loss_memory.cpp).
  float filter = 1e-6f;
  // With the head left on flash (training under a memory budget, model/weight_pager.h): called
  // with the rows of the next tile while one computes (to start reading them), and with a
  // tile's rows once it is done (to drop them from memory). Empty: the head stays in DRAM.
  std::function<void(int64_t begin, int64_t end)> prefetch_rows, release_rows;
};

struct TiledLossStats {
  int64_t rows_computed = 0;  // vocabulary rows the backward accumulated
  int64_t rows_skipped = 0;   // below the filter for every token
};

// The bytes of scratch the tiled loss holds for n tokens (the memory it is measured by).
uint64_t tiled_loss_scratch_bytes(const Matrix& w, int64_t n_tokens, const TiledLossOptions& o);

// lse[t] = logsumexp of token t's logits, nll[t] = lse[t] - its target's logit, for t < n;
// h is n x d (d = w.cols). A target outside the vocabulary is an Error.
void tiled_cross_entropy(const Matrix& w, const float* h, int64_t n, const int32_t* targets,
                         float* nll, float* lse, ThreadPool& pool, const TiledLossOptions& o = {});

// dh[t] += grad[t] * dloss_t/dh_t for t < n (grad: the upstream gradient of each token's
// loss, e.g. 1/n for the mean; 0 leaves a token out), from the forward's lse.
void tiled_cross_entropy_backward(const Matrix& w, const float* h, int64_t n,
                                  const int32_t* targets, const float* lse, const float* grad,
                                  float* dh, ThreadPool& pool, const TiledLossOptions& o = {},
                                  TiledLossStats* stats = nullptr);

// The usual way, which the tiled loss is measured against (bench/loss_memory): all n x vocab
// logits at once and their gradient beside them, through the same kernels. nll and, when dh is
// not null, dh += grad-weighted gradient as tiled_cross_entropy_backward gives it.
void naive_cross_entropy(const Matrix& w, const float* h, int64_t n, const int32_t* targets,
                         const float* grad, float* nll, float* dh, ThreadPool& pool);

}  // namespace flashlm
