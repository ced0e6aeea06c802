// The flight recorder: the ring itself, its setting, its dump from real host communicators
// (ranks as threads), and trident-fr's analysis of those dumps.
#include "comm/flight_recorder.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/flight_dumps.h"
#include "tools/trident-fr/analyze.h"
#include "trident/communicator.h"
#include "trident/store.h"

namespace trident::fr {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(FlightRecorderTest, RecordsFieldsAndStates) {
  FlightRecorder r({.name = "world", .epoch = 3, .rank = 1, .size = 4}, 16);
  const uint64_t a = r.Issue("AllReduce", "f32", 8, -1, 0);
  const uint64_t b = r.Issue("Broadcast", "i64", 2, 3, 1);
  const uint64_t c = r.Issue("Send", "u8", 5, 2, -1);
  r.Start(a);
  r.Finish(a, true);
  r.Start(b);
  r.Finish(c, false);
  std::vector<Entry> e = r.Snapshot();
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].op, "AllReduce");
  EXPECT_EQ(e[0].dtype, "f32");
  EXPECT_EQ(e[0].count, 8);
  EXPECT_EQ(e[0].seq, 0);
  EXPECT_EQ(e[0].state, OpState::kCompleted);
  EXPECT_GT(e[0].issued_ns, 0);
  EXPECT_GE(e[0].started_ns, e[0].issued_ns);
  EXPECT_GE(e[0].ended_ns, e[0].started_ns);
  EXPECT_EQ(e[1].peer, 3);
  EXPECT_EQ(e[1].state, OpState::kStarted);
  EXPECT_EQ(e[1].ended_ns, 0);
  EXPECT_EQ(e[2].seq, -1);
  EXPECT_EQ(e[2].state, OpState::kFailed);
  EXPECT_EQ(r.last_issuer_tid(), CurrentTid());
}

TEST(FlightRecorderTest, KeepsTheLastCapacityOpsAndIgnoresLateUpdatesOfOverwrittenOnes) {
  FlightRecorder r({}, 10);  // rounded up to 16
  EXPECT_EQ(r.capacity(), 16u);
  for (int i = 0; i < 40; ++i) r.Issue("AllReduce", "f32", i, -1, i);
  r.Finish(3, false);  // long overwritten: must not touch entry 35, which shares its slot
  std::vector<Entry> e = r.Snapshot();
  ASSERT_EQ(e.size(), 16u);
  EXPECT_EQ(e.front().id, 24u);
  EXPECT_EQ(e.back().id, 39u);
  for (const Entry& x : e) {
    EXPECT_EQ(x.count, static_cast<int64_t>(x.id));
    EXPECT_EQ(x.state, OpState::kIssued);
  }
}

TEST(FlightRecorderTest, LateFinishOfAnOverwrittenOpNeverLandsInANewerEntry) {
  // The ring wraps while an old op still finishes: the late Start/Finish of id n - 16 races
  // with the Issue of id n in the same slot. It may update its own entry or nothing; it must
  // never leave its state or times in entry n (which no one starts or finishes here).
  FlightRecorder r({}, 16);
  std::atomic<uint64_t> issued{0}, late_max{0};
  std::atomic<bool> stop{false}, pause{false}, paused{false};
  std::thread late([&] {
    while (!stop.load()) {
      if (pause.load()) {
        paused = true;
        continue;
      }
      paused = false;
      const uint64_t n = issued.load();
      if (n < 16) continue;
      late_max = std::max(late_max.load(), n - 16);
      r.Start(n - 16);
      r.Finish(n - 16, true);
    }
  });
  for (int round = 0; round < 150; ++round) {
    for (int i = 0; i < 100; ++i) {
      r.Issue("AllReduce", "f32", 1, -1, i);
      issued.fetch_add(1);
    }
    pause = true;
    while (!paused.load()) std::this_thread::yield();
    for (const Entry& e : r.Snapshot()) {
      if (e.id <= late_max.load()) continue;  // the late thread's own op: may be finished
      ASSERT_EQ(e.state, OpState::kIssued) << "entry " << e.id << " took an older op's state";
      ASSERT_EQ(e.started_ns, 0) << "entry " << e.id;
      ASSERT_EQ(e.ended_ns, 0) << "entry " << e.id;
    }
    paused = false;
    pause = false;
  }
  stop = true;
  late.join();
}

TEST(FlightRecorderTest, ConcurrentIssuersAndReadersSeeOnlyWholeEntries) {
  FlightRecorder r({}, 64);
  std::atomic<bool> stop{false}, reading{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < 3; ++t) {
    writers.emplace_back([&, t] {
      while (!reading.load()) std::this_thread::yield();  // overlap with the reader
      for (int i = 0; i < 20000; ++i) {
        const uint64_t id = r.Issue("AllGather", "bf16", 1000 * t + i % 1000, t, 1000 * t + i % 1000);
        r.Start(id);
        r.Finish(id, true);
      }
    });
  }
  int checked = 0;
  std::thread reader([&] {
    bool last = false;
    while (!last) {
      last = stop.load();  // one more pass after the writers are done
      reading = true;
      for (const Entry& e : r.Snapshot()) {
        // Every field of an entry comes from the same Issue call.
        ASSERT_EQ(e.count, e.seq);
        ASSERT_EQ(e.peer, e.seq / 1000);
        ASSERT_EQ(e.op, "AllGather");
        ++checked;
      }
    }
  });
  for (auto& w : writers) w.join();
  stop = true;
  reader.join();
  EXPECT_EQ(r.issued(), 60000u);
  EXPECT_GT(checked, 0);
}

class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    if (const char* old = getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~EnvGuard() {
    if (old_.empty()) unsetenv(name_);
    else setenv(name_, old_.c_str(), 1);
  }

 private:
  const char* name_;
  std::string old_;
};

TEST(FlightRecorderTest, MalformedEntriesSettingIsAnErrorNotAnAbort) {
  {
    EnvGuard env("TRIDENT_FR_ENTRIES", "lots");
    absl::StatusOr<size_t> c = CapacityFromEnv();
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("TRIDENT_FR_ENTRIES"));
    // The public entry point refuses it too, and a recorder still gets the default.
    InprocCommOptions o;
    EXPECT_EQ(FlightRecorder::Create({})->capacity(), 2048u);
  }
  {
    EnvGuard env("TRIDENT_FR_ENTRIES", "8");
    EXPECT_EQ(CapacityFromEnv().status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    EnvGuard env("TRIDENT_FR_ENTRIES", "100");
    EXPECT_EQ(*CapacityFromEnv(), 100u);
    EXPECT_EQ(FlightRecorder::Create({})->capacity(), 128u);
  }
}

TEST(FlightRecorderTest, RecordersRegisterForTheLifeOfTheirOwner) {
  const int before = RegisteredRecorders();
  {
    auto r = FlightRecorder::Create({.name = "x"});
    EXPECT_EQ(RegisteredRecorders(), before + 1);
    nlohmann::json j = nlohmann::json::parse(ProcessDumpJson("test"));
    EXPECT_EQ(j["reason"], "test");
    EXPECT_EQ(j["pid"], getpid());
  }
  EXPECT_EQ(RegisteredRecorders(), before);
}

// --- real communicators, ranks as threads, dumps, analysis -----------------------------------

class DumpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/fr-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs fn(rank, comm) on n threads over in-process communicators; ops time out after 1 s.
  void Run(int n, const std::function<void(int, Communicator&)>& fn) {
    EnvGuard env("TRIDENT_FR_DIR", dir_.c_str());
    InprocCommOptions o;
    o.size = n;
    o.timeout = absl::Seconds(1);
    auto comms = NewInprocCommunicators(o);
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r, *comms[r]); });
    for (auto& t : threads) t.join();
  }

  Analysis Analyze() {
    absl::StatusOr<Analysis> a = AnalyzeDir(dir_);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *a : Analysis{};
  }

  std::string dir_;
};

absl::Status AllReduce(Communicator& c, std::vector<float>& v) {
  Tensor t = Tensor::Of(v.data(), static_cast<int64_t>(v.size()));
  return c.AllReduce(t, t, ReduceOp::kSum)->Wait(DeadlineIn(absl::Seconds(20)));
}

TEST_F(DumpTest, RankThatSkipsACollectiveIsNamed) {
  Run(3, [&](int r, Communicator& c) {
    // Point-to-point ops first, as the runtime's transport self-test sends at every world
    // build: they have no collective sequence number and are never taken for a mismatch.
    std::vector<float> out(4, static_cast<float>(r)), in(4, 0);
    auto send = c.Send(Tensor::Of(out.data(), 4), (r + 1) % 3, 1);
    auto recv = c.Recv(Tensor::Of(in.data(), 4), (r + 2) % 3, 1);
    ASSERT_TRUE(send->Wait().ok());
    ASSERT_TRUE(recv->Wait().ok());
    std::vector<float> v(8, 1);
    ASSERT_TRUE(AllReduce(c, v).ok());
    ASSERT_TRUE(AllReduce(c, v).ok());
    if (r == 2) return;  // skips #2
    EXPECT_EQ(AllReduce(c, v).code(), absl::StatusCode::kDeadlineExceeded);
  });
  Analysis a = Analyze();
  ASSERT_EQ(a.groups.size(), 1u) << a.Text();
  const GroupFinding& g = a.groups[0];
  EXPECT_EQ(g.group, "inproc epoch 0");
  EXPECT_EQ(g.last_seq, 2);
  EXPECT_EQ(g.first_missing_seq, 2);
  EXPECT_THAT(g.never_issued, ElementsAre(2));
  EXPECT_THAT(g.behind, ElementsAre(2));
  EXPECT_EQ(g.missing_op, "AllReduce(f32, count=8)");
  EXPECT_EQ(g.outside.count(2), 1u);
  EXPECT_TRUE(g.mismatch.empty());
  EXPECT_THAT(a.Text(), HasSubstr("rank 2 never issued #2 AllReduce(f32, count=8)"));
  EXPECT_THAT(a.Text(), Not(HasSubstr("Send(")));
  EXPECT_THAT(a.Text(), HasSubstr("rank 2 is stuck outside any op"));
  // The op that timed out is dumped as failed (its worker marks it before it dumps).
  EXPECT_THAT(a.Text(), HasSubstr("rank 0 was in AllReduce #2 (failed after"));
  EXPECT_THAT(a.Verdict(), HasSubstr("rank 2 never issued #2 AllReduce(f32, count=8) of group "
                                     "inproc epoch 0: it is stuck outside any op"));
}

TEST_F(DumpTest, RankThatCallsADifferentOpIsNamed) {
  Run(3, [&](int r, Communicator& c) {
    std::vector<float> v(8, 1), all(24);
    ASSERT_TRUE(AllReduce(c, v).ok());
    absl::Status s = r == 1 ? c.AllGather(Tensor::Of(v.data(), 8), Tensor::Of(all.data(), 24))
                                  ->Wait(DeadlineIn(absl::Seconds(20)))
                            : AllReduce(c, v);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  });
  Analysis a = Analyze();
  ASSERT_EQ(a.groups.size(), 1u) << a.Text();
  const GroupFinding& g = a.groups[0];
  EXPECT_EQ(g.mismatch_seq, 1);
  ASSERT_EQ(g.mismatch.size(), 2u) << a.Text();
  EXPECT_THAT(g.mismatch.at("AllGather(f32, count=8)"), ElementsAre(1));
  EXPECT_THAT(g.mismatch.at("AllReduce(f32, count=8)"), ElementsAre(0, 2));
  EXPECT_TRUE(g.behind.empty());
  EXPECT_THAT(a.Text(), HasSubstr("rank 1 issued AllGather(f32, count=8)"));
  EXPECT_EQ(a.Verdict(), "rank 1 called AllGather(f32, count=8) at #1 of group inproc epoch 0 "
                         "where ranks 0, 2 called AllReduce(f32, count=8)");
  // Three communicators of this process failed together: the one file names every failure
  // (the process's earlier ones too: the list is the process's last 16).
  std::ifstream in(absl::StrCat(dir_, "/fr-pid", getpid(), ".json"));
  nlohmann::json j = nlohmann::json::parse(in);
  int mismatches = 0;
  for (const auto& f : j["failures"]) {
    mismatches += absl::StrContains(f.get<std::string>(), "INVALID_ARGUMENT: ranks called different");
  }
  EXPECT_EQ(mismatches, 3) << j["failures"].dump(1);
}

TEST_F(DumpTest, MissingDumpIsSaidAndTheOthersStillAnalysed) {
  // Two dumps of a 3-rank group written by hand: ranks 0 and 1 wait in #5, rank 2 left none.
  auto dump = [](int rank) {
    nlohmann::json e = {{"id", 5}, {"seq", 5}, {"op", "Barrier"}, {"dtype", "u8"},
                        {"count", 0}, {"peer", -1}, {"state", "started"},
                        {"issued_ns", 1000000000}, {"started_ns", 1000000000}, {"ended_ns", 0}};
    nlohmann::json c = {{"name", "world"}, {"epoch", 2}, {"rank", rank}, {"size", 3},
                        {"members", {0, 1, 2}}, {"entries", {e}}, {"last_issuer_tid", 0}};
    return nlohmann::json{{"rank", rank}, {"pid", 10 + rank}, {"time_ns", 4000000000},
                          {"communicators", {c}}, {"threads", nlohmann::json::array()}}
        .dump();
  };
  Analysis a = AnalyzeDumps({{"fr-w0.json", dump(0)}, {"fr-w1.json", dump(1)},
                             {"fr-junk.json", "{not json"}});
  ASSERT_EQ(a.groups.size(), 1u);
  EXPECT_THAT(a.groups[0].no_dump, ElementsAre(2));
  EXPECT_EQ(a.groups[0].waiting.size(), 2u);
  EXPECT_THAT(a.Text(), HasSubstr("rank 2 left no dump: what it issued is unknown; every rank "
                                  "with a dump waits in #5"));
  EXPECT_THAT(a.Text(), HasSubstr("rank 0 waits in Barrier #5 (started, issued 3.0 s before"));
  EXPECT_THAT(a.Text(), HasSubstr("note: fr-junk.json is not a flight-recorder dump"));
}

int ThreadsNamed(const std::string& name) {
  int n = 0;
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(t.path() / "comm");
    std::string comm;
    std::getline(in, comm);
    n += comm == name;
  }
  return n;
}

TEST_F(DumpTest, DumpOnRequestFromALiveProcessAndNoThreadLeftBehind) {
  EnvGuard env("TRIDENT_FR_DIR", dir_.c_str());
  ASSERT_EQ(ThreadsNamed("trident-fr"), 0);
  {
    auto r = FlightRecorder::Create({.name = "world", .epoch = 7, .size = 1, .members = {0}});
    r->Issue("Barrier", "u8", 0, -1, 0);
    EXPECT_EQ(ThreadsNamed("trident-fr"), 1);
    ASSERT_TRUE(RequestDumps(dir_, "test asks").ok());
    const std::string path = absl::StrCat(dir_, "/fr-pid", getpid(), ".json");
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!std::filesystem::exists(path) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ASSERT_TRUE(std::filesystem::exists(path)) << "no dump 30 s after the request";
    std::ifstream in(path);
    nlohmann::json j = nlohmann::json::parse(in);
    EXPECT_THAT(j["reason"].get<std::string>(), HasSubstr("requested: test asks"));
    ASSERT_EQ(j["communicators"].size(), 1u);
    EXPECT_EQ(j["communicators"][0]["epoch"], 7);
    EXPECT_EQ(j["communicators"][0]["entries"][0]["state"], "issued");
    EXPECT_EQ(j["threads"][0]["tid"], CurrentTid());
    // This thread: running, or sleeping in its poll for the file.
    EXPECT_THAT(j["threads"][0]["state"].get<std::string>(), ::testing::AnyOf("R", "S"));
  }
  EXPECT_EQ(ThreadsNamed("trident-fr"), 0);
}

TEST(DumpResponderTest, AnswersTheStoreRequestAndSigusr1AndReportsADeadline) {
  std::shared_ptr<Store> store = NewMemoryStore();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  const std::string key = absl::StrCat(kDumpPrefix, "w5");
  auto recorder = FlightRecorder::Create({.name = "world", .epoch = 2, .size = 1, .members = {0}});
  recorder->Issue("AllReduce", "f32", 4, -1, 0);
  {
    runtime_internal::DumpResponder responder(store, "w5");
    ASSERT_TRUE(responder.took_sigusr1()) << "SIGUSR1 had its default disposition";
    // trident-run's request: the first poll reads it and publishes the dump.
    ASSERT_TRUE(store->Set(kDumpRequestKey, "n1 the test asks", deadline).ok());
    responder.Poll();
    absl::StatusOr<std::string> dump = store->TryGet(key, deadline);
    ASSERT_TRUE(dump.ok()) << dump.status();
    nlohmann::json j = nlohmann::json::parse(*dump);
    EXPECT_EQ(j["reason"], "requested: n1 the test asks");
    ASSERT_EQ(j["communicators"].size(), 1u);
    EXPECT_EQ(j["communicators"][0]["entries"][0]["op"], "AllReduce");
    // SIGUSR1: the handler sets a flag; the next poll dumps and publishes.
    ASSERT_EQ(raise(SIGUSR1), 0);
    responder.Poll();
    j = nlohmann::json::parse(*store->TryGet(key, deadline));
    EXPECT_EQ(j["reason"], "SIGUSR1");
    // A dump written by a failing op reaches the store at the next Flush.
    DumpOnFailure("world[test]", absl::DeadlineExceededError("AllReduce #0 timed out"));
    responder.Flush();
    j = nlohmann::json::parse(*store->TryGet(key, deadline));
    EXPECT_THAT(j["reason"].get<std::string>(), HasSubstr("AllReduce #0 timed out"));
    responder.ReportDeadline(absl::DeadlineExceededError("AllReduce #3 timed out"));
    absl::StatusOr<std::string> hang = store->TryGet(absl::StrCat(kHangReportPrefix, "w5"), deadline);
    ASSERT_TRUE(hang.ok()) << hang.status();
    EXPECT_THAT(*hang, HasSubstr("AllReduce #3 timed out"));
  }
  struct sigaction now {};
  ASSERT_EQ(sigaction(SIGUSR1, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_DFL) << "the responder gives SIGUSR1 back";
}

TEST(AnalyzeDirTest, EmptyDirectorySaysWhereDumpsComeFrom) {
  absl::StatusOr<Analysis> a = AnalyzeDir(::testing::TempDir());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("TRIDENT_FR_DIR"));
}

}  // namespace
}  // namespace trident::fr
