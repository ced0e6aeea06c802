#include "corpus.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

// The corpus file is linked into the binary as bytes between two symbols (LM_CORPUS_FILE is
// set by CMake to its absolute path), so lm-trainer runs from anywhere without data files.
asm(".section .rodata\n"
    ".global lm_corpus_begin\n"
    ".global lm_corpus_end\n"
    "lm_corpus_begin:\n"
    ".incbin \"" LM_CORPUS_FILE "\"\n"
    "lm_corpus_end:\n"
    ".previous\n");
extern "C" const char lm_corpus_begin[];
extern "C" const char lm_corpus_end[];

namespace lm {

uint64_t Hash(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
               (c + 0x8CB92BA72F3D8DD7ull) * 0x94D049BB133111EBull;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

float UniformFromHash(uint64_t h) {
  // 24 random bits give every float in [0, 1) exactly representable steps.
  return static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

absl::string_view Corpus::BuiltinText() {
  return absl::string_view(lm_corpus_begin, static_cast<size_t>(lm_corpus_end - lm_corpus_begin));
}

absl::StatusOr<Corpus> Corpus::Create(absl::string_view text, int context,
                                      double val_fraction) {
  if (context < 1) return absl::InvalidArgumentError("context must be at least 1 character");
  Corpus c;
  c.context_ = context;
  std::array<int, 256> id;
  id.fill(-1);
  for (unsigned char ch : text) id[ch] = 0;
  for (int b = 0; b < 256; ++b) {
    if (id[b] == 0) {
      id[b] = static_cast<int>(c.vocab_.size());
      c.vocab_.push_back(static_cast<char>(b));
    }
  }
  c.ids_.reserve(text.size());
  for (unsigned char ch : text) c.ids_.push_back(static_cast<uint8_t>(id[ch]));
  const auto n = static_cast<int64_t>(text.size());
  c.train_end_ = n - static_cast<int64_t>(static_cast<double>(n) * val_fraction);
  if (c.train_end_ < context + 1 || n - c.train_end_ < context + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus of ", n, " characters is too short for a context of ", context,
        " with a validation fraction of ", val_fraction, ": each part needs ", context + 1,
        " characters or more"));
  }
  return c;
}

absl::StatusOr<Corpus> Corpus::FromFile(const std::string& path, int context,
                                        double val_fraction) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open corpus file ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  auto corpus = Create(buf.str(), context, val_fraction);
  if (!corpus.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", corpus.status().message()));
  }
  return corpus;
}

int64_t Corpus::TrainPosition(uint64_t seed, int64_t step, int64_t index) const {
  const auto span = static_cast<uint64_t>(train_end_ - context_);
  return context_ + static_cast<int64_t>(Hash(seed, static_cast<uint64_t>(step),
                                              static_cast<uint64_t>(index)) % span);
}

int64_t Corpus::ValPosition(int64_t index, int64_t count) const {
  const int64_t span = val_size() - context_;
  return train_end_ + context_ + (count > 0 ? index * span / count : 0);
}

}  // namespace lm
