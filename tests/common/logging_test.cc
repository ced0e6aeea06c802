// Logging as a guest (issue 12): Trident logs through its own "trident" logger and never
// touches spdlog's default logger, its pattern or its level; TRIDENT_LOG_LEVEL in any case.
#include "common/logging.h"

#include <stdlib.h>

#include <memory>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "trident/communicator.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(LoggingTest, TheHostsDefaultLoggerPatternAndLevelStayTheHosts) {
  // The host's own setup, before Trident does anything.
  std::ostringstream host_out;
  auto host = std::make_shared<spdlog::logger>(
      "host", std::make_shared<spdlog::sinks::ostream_sink_mt>(host_out));
  host->set_pattern("HOST %v");
  host->set_level(spdlog::level::err);
  spdlog::set_default_logger(host);

  ::setenv("TRIDENT_LOG_LEVEL", "DEBUG", 1);
  // A real entry point that logs (a one-rank world over the in-process store).
  HostCommOptions options;
  options.rank = 0;
  options.world_size = 1;
  options.store = NewMemoryStore();
  options.provider = "shm";
  auto comm = CreateHostCommunicator(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  std::ostringstream ours;
  Logger().sinks().push_back(std::make_shared<spdlog::sinks::ostream_sink_mt>(ours));
  InitLogging("rank 7");  // sets the pattern of every sink of Trident's logger
  TLOG(debug, "a debug line from the library");
  Logger().flush();
  ::unsetenv("TRIDENT_LOG_LEVEL");

  EXPECT_EQ(spdlog::default_logger().get(), host.get());
  EXPECT_EQ(spdlog::default_logger()->level(), spdlog::level::err);
  EXPECT_EQ(Logger().name(), "trident");
  EXPECT_EQ(Logger().level(), spdlog::level::debug);  // "DEBUG": any case
  // Epoch 0: the communicator made above (the epoch shows in every line).
  EXPECT_THAT(ours.str(),
              HasSubstr("[trident rank 7 epoch 0] [debug] a debug line from the library"));
  spdlog::info("a host line");
  spdlog::error("a host error");
  host->flush();
  EXPECT_EQ(host_out.str(), "HOST a host error\n");  // the host's pattern and level
  EXPECT_THAT(host_out.str(), Not(HasSubstr("trident")));
  Logger().sinks().pop_back();
}

TEST(LoggingTest, LevelFromEnvironmentInAnyCase) {
  struct Case {
    const char* value;
    spdlog::level::level_enum level;
  };
  for (const Case& c : {Case{"INFO", spdlog::level::info}, Case{"Warn", spdlog::level::warn},
                        Case{"WARNING", spdlog::level::warn}, Case{"error", spdlog::level::err},
                        Case{"OFF", spdlog::level::off},
                        // Invalid: info (CheckParams reports it), never "off".
                        Case{"loud", spdlog::level::info}}) {
    ::setenv("TRIDENT_LOG_LEVEL", c.value, 1);
    EXPECT_EQ(LogLevelFromEnv(), c.level) << c.value;
  }
  ::unsetenv("TRIDENT_LOG_LEVEL");
  EXPECT_EQ(LogLevelFromEnv(), spdlog::level::info);
}

}  // namespace
}  // namespace trident
