#include "common/logging.h"

#include <atomic>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/params.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace trident {
namespace {

std::atomic<int64_t> log_epoch{-1};

// %Q in the pattern: the epoch of SetLogEpoch, or "-" before one is known.
class EpochFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const int64_t e = log_epoch.load(std::memory_order_relaxed);
    const std::string s = e < 0 ? "-" : std::to_string(e);
    dest.append(s.data(), s.data() + s.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<EpochFlag>();
  }
};

}  // namespace

void SetLogEpoch(int64_t epoch) {
  int64_t cur = log_epoch.load(std::memory_order_relaxed);
  while (cur < epoch && !log_epoch.compare_exchange_weak(cur, epoch)) {
  }
}

void InitLogging(absl::string_view who) {
  static std::once_flag once;
  std::call_once(once, [] {
    // Logs go to stderr so that a program's stdout stays its own (tables, JSON).
    auto logger = spdlog::stderr_color_mt("trident");
    spdlog::set_default_logger(logger);
  });
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<EpochFlag>('Q').set_pattern(
      absl::StrCat("[%H:%M:%S.%e] [trident ", who, " epoch %Q] [%l] %v"));
  spdlog::set_formatter(std::move(formatter));
  // A bad level is reported by CheckParams(); spdlog would turn it into "off".
  spdlog::set_level(CheckParam("TRIDENT_LOG_LEVEL").ok()
                        ? spdlog::level::from_str(ParamString("TRIDENT_LOG_LEVEL"))
                        : spdlog::level::info);
}

}  // namespace trident
