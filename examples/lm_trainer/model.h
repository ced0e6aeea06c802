// The lm-trainer's model: a character-level language model in the style of Bengio et al.
// (2003), made deep with residual MLP blocks, written out as explicit forward and backward
// passes over OpenBLAS matrix products.
//
//   x0 = concat(E[c_{t-k}], ..., E[c_{t-1}])            embedding, hidden = context * embed
//   x_{l+1} = x_l + relu(x_l W1_l + b1_l) W2_l + b2_l   `layers` MLP blocks, inner width ffn
//   p = softmax(x_L Wout + bout)                         cross-entropy against c_t
//
// Parallel layout: the blocks are split over the pipeline's virtual stages (a Chunk is one
// virtual stage's share on one tp rank; the first holds the embedding, the last the head);
// inside a block W1/b1 are split by columns and W2 by rows over the tp group (Megatron's
// column- then row-parallel MLP), everything else is replicated over tp. Every parameter is
// initialised from a hash of (seed, name, global index), so all layouts start from the same
// global weights.
#ifndef TRIDENT_EXAMPLES_LM_TRAINER_MODEL_H_
#define TRIDENT_EXAMPLES_LM_TRAINER_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trident/communicator.h"

namespace lm {

struct ModelConfig {
  int vocab = 0;     // from the corpus
  int context = 16;  // characters the model sees before the one it predicts
  int embed = 16;    // embedding width per character
  int ffn = 512;     // inner width of an MLP block (split over tp)
  int layers = 4;    // MLP blocks (split over the pipeline's virtual stages)
  uint64_t seed = 1;
  int hidden() const { return context * embed; }
};

// One parameter as this rank holds it: a slice of the global tensor (the whole tensor unless
// it is split over tp), with its gradient.
struct Param {
  std::string name;                   // "block2.w1"
  std::vector<int64_t> global_shape;  // of the whole tensor
  std::vector<int64_t> offset;        // of this slice in the whole tensor
  std::vector<int64_t> shape;         // of this slice
  bool tp_replicated = true;          // the same values on every tp rank
  std::vector<float> value;
  std::vector<float> grad;
};

// What one micro-batch's forward keeps for its backward (Chunk owns the layout).
struct Stash {
  int n = 0;                     // rows (samples) of the micro-batch
  std::vector<uint8_t> tokens;   // n x context, with the embedding
  std::vector<uint8_t> targets;  // n, with the head
  std::vector<std::vector<float>> x, u, a;  // per block: input, pre-activation, activation
  std::vector<std::vector<float>> dy, du;   // per block, from B for W
  std::vector<float> head_x, probs, dlogits, dx0;
};

// The layers of one virtual stage on one tp rank.
class Chunk {
 public:
  struct Placement {
    int first_layer = 0;  // blocks [first_layer, first_layer + num_layers)
    int num_layers = 0;
    bool has_embedding = false;  // first virtual stage
    bool has_head = false;       // last virtual stage
    int tp_rank = 0;
    int tp_size = 1;
  };
  // `tp` is the tensor-parallel group (size placement.tp_size; may be set later with set_tp);
  // it must outlive its use.
  Chunk(const ModelConfig& config, const Placement& placement, trident::Communicator* tp);

  // Forward of one micro-batch of n samples. With the embedding `tokens` (n x context ids) is
  // read and `input` ignored, else `input` is n x hidden. With the head the loss is computed
  // against `targets` (n ids): -sum(log p) is added to *loss_sum, and the backward will start
  // from d(loss_sum * grad_scale); without it `output` (n x hidden) receives the activation.
  // `stash` keeps what the backward needs; null for evaluation.
  absl::Status Forward(int n, const uint8_t* tokens, const float* input, const uint8_t* targets,
                       float* output, double* loss_sum, float grad_scale, Stash* stash);
  // B: the input gradient. `grad_output` (n x hidden) is ignored with the head; `grad_input`
  // (n x hidden) receives the gradient unless this chunk holds the embedding.
  absl::Status BackwardInput(Stash& stash, const float* grad_output, float* grad_input);
  // W: adds this micro-batch's weight gradients into the params' grad, then frees the stash.
  void BackwardWeight(Stash& stash);

  const Placement& placement() const { return placement_; }
  // The tp group to use from now on (after a recovery rebuilt it).
  void set_tp(trident::Communicator* tp) { tp_ = tp; }
  // This chunk's parameters, in forward order.
  std::vector<Param*> params();
  void ZeroGrads();
  // Nanoseconds spent waiting on tp collectives since construction.
  int64_t tp_comm_ns() const { return tp_comm_ns_; }

 private:
  struct Block {
    Param w1, b1, w2, b2;
  };
  absl::Status TpAllReduce(std::vector<float>& buf, bool forward);

  ModelConfig config_;
  Placement placement_;
  trident::Communicator* tp_;
  int ffn_local_;  // ffn / tp_size
  std::unique_ptr<Param> embedding_, head_w_, head_b_;
  std::vector<Block> blocks_;
  int64_t tp_comm_ns_ = 0;
};

}  // namespace lm

#endif  // TRIDENT_EXAMPLES_LM_TRAINER_MODEL_H_
