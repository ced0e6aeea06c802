// The lm-trainer's data: a text corpus as character ids, split into training and validation
// text, and the deterministic batches every layout draws from it.
//
// Batches depend only on (seed, step, sample index), never on the layout: sample i of step s
// is the same (context, target) pair whichever rank reads it, which is what lets runs at
// different tp/pp/dp layouts compute the same losses.
#ifndef TRIDENT_EXAMPLES_LM_TRAINER_CORPUS_H_
#define TRIDENT_EXAMPLES_LM_TRAINER_CORPUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lm {

class Corpus {
 public:
  // The text built into the binary: Genesis and Exodus from the King James Bible (public
  // domain; Debian's bible-kjv-text), about 367 KB.
  static absl::string_view BuiltinText();

  // Builds the vocabulary (the distinct bytes of `text`, sorted) and splits off the last
  // `val_fraction` of the text for validation. kInvalidArgument when either part is shorter
  // than `context` + 1 characters.
  static absl::StatusOr<Corpus> Create(absl::string_view text, int context,
                                       double val_fraction = 0.1);
  // Reads `path` and calls Create; kNotFound / kInvalidArgument say which file and why.
  static absl::StatusOr<Corpus> FromFile(const std::string& path, int context,
                                         double val_fraction = 0.1);

  int vocab_size() const { return static_cast<int>(vocab_.size()); }
  int context() const { return context_; }
  int64_t train_size() const { return train_end_; }
  int64_t val_size() const { return static_cast<int64_t>(ids_.size()) - train_end_; }

  // Position (index of the target character) of training sample `index` of step `step`:
  // uniform over the training text, a pure function of (seed, step, index).
  int64_t TrainPosition(uint64_t seed, int64_t step, int64_t index) const;
  // Position of validation sample `index` of `count`: evenly spread over the validation text.
  int64_t ValPosition(int64_t index, int64_t count) const;

  // The `context` character ids before `position`, and the id at it.
  const uint8_t* ContextAt(int64_t position) const { return ids_.data() + position - context_; }
  int TargetAt(int64_t position) const { return ids_[position]; }

 private:
  int context_ = 0;
  std::vector<char> vocab_;
  std::vector<uint8_t> ids_;
  int64_t train_end_ = 0;
};

// A 64-bit mix of its inputs (splitmix64 finaliser); the trainer's only source of randomness.
uint64_t Hash(uint64_t a, uint64_t b = 0, uint64_t c = 0);
// Uniform in [-1, 1) from a hash.
float UniformFromHash(uint64_t h);

}  // namespace lm

#endif  // TRIDENT_EXAMPLES_LM_TRAINER_CORPUS_H_
