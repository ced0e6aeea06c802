#include "common/logging.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/params.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace trident {

void InitLogging(absl::string_view who) {
  static std::once_flag once;
  std::call_once(once, [] {
    // Logs go to stderr so that a program's stdout stays its own (tables, JSON).
    auto logger = spdlog::stderr_color_mt("trident");
    spdlog::set_default_logger(logger);
  });
  spdlog::set_pattern(absl::StrCat("[%H:%M:%S.%e] [trident ", who, "] [%l] %v"));
  // A bad level is reported by CheckParams(); spdlog would turn it into "off".
  spdlog::set_level(CheckParam("TRIDENT_LOG_LEVEL").ok()
                        ? spdlog::level::from_str(ParamString("TRIDENT_LOG_LEVEL"))
                        : spdlog::level::info);
}

}  // namespace trident
