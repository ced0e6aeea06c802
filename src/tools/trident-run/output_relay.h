// Relays the children's stdout and stderr to trident-run's own, one whole line at a time,
// each line prefixed with the rank that printed it ("[rank 3] ...").
//
// OutputWriter serializes every write to trident-run's stdout and stderr (the relay's and the
// launcher's own messages), so lines never interleave mid-line. LineSplitter turns a byte
// stream into prefixed lines. OutputRelay is one thread that poll()s every child pipe.
//
//   OutputWriter writer(STDOUT_FILENO, STDERR_FILENO);
//   OutputRelay relay(&writer);
//   relay.Add(stdout_pipe_read_end, "[rank 0] ", Stream::kStdout, /*owner=*/0);
//   relay.Start();
//   ...  // rank 0 exits:
//   relay.CatchUp(0);  // its last lines come out before the report of its exit
//   relay.Finish(absl::Now() + absl::Seconds(2));  // drains, flushes partial lines, joins
#ifndef TRIDENT_TOOLS_TRIDENT_RUN_OUTPUT_RELAY_H_
#define TRIDENT_TOOLS_TRIDENT_RUN_OUTPUT_RELAY_H_

#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace trident::run {

enum class Stream { kStdout = 0, kStderr = 1 };

// Writes to two file descriptors; each Write() lands in one piece relative to the others.
// Once a descriptor fails (EPIPE: nobody reads our stdout), its output is dropped, so the
// relay keeps draining the children instead of blocking them. Thread-safe.
class OutputWriter {
 public:
  OutputWriter(int stdout_fd, int stderr_fd);
  void Write(Stream stream, absl::string_view bytes);

 private:
  absl::Mutex mu_;
  int fds_[2];
  bool broken_[2] ABSL_GUARDED_BY(mu_) = {false, false};
};

// Splits one byte stream into lines and prefixes each. Not thread-safe (one per pipe).
class LineSplitter {
 public:
  // A partial line longer than this is emitted as a line of its own, so one child that
  // never prints a newline cannot make trident-run buffer without bound.
  static constexpr size_t kMaxLineBytes = 64 * 1024;

  explicit LineSplitter(std::string prefix) : prefix_(std::move(prefix)) {}

  // Appends every line completed by `data` to *out, prefixed and with its '\n'.
  void Feed(absl::string_view data, std::string* out);
  // Appends the pending partial line, if any, prefixed and with a '\n' added.
  void Flush(std::string* out);

 private:
  std::string prefix_;
  std::string partial_;
};

class OutputRelay {
 public:
  explicit OutputRelay(OutputWriter* writer);
  // Finish()es with an immediate deadline if the caller did not.
  ~OutputRelay();

  OutputRelay(const OutputRelay&) = delete;
  OutputRelay& operator=(const OutputRelay&) = delete;

  // Takes ownership of `fd` (the read end of a child's pipe; made non-blocking here).
  // `owner` names the child for CatchUp(). Only before Start().
  void Add(int fd, std::string prefix, Stream stream, int owner);
  // Starts the relay thread.
  void Start();
  // Relays, on the calling thread, what `owner`'s pipes hold now, including a partial last
  // line once the pipe is at EOF. Called when a child has exited, so that its last words
  // come out before the launcher reports its exit. Thread-safe.
  void CatchUp(int owner);
  // Waits until every pipe reached EOF or `deadline` passed (a grandchild may hold a pipe
  // open forever), then reads what is left without blocking, flushes partial lines, closes
  // the pipes and joins the thread. Idempotent.
  void Finish(absl::Time deadline);

 private:
  struct Source {
    int fd;  // -1 once closed
    Stream stream;
    int owner;
    LineSplitter splitter;
    bool eof = false;  // CatchUp() saw EOF and flushed; the relay thread closes the fd
  };

  void Loop();
  // Reads once from `source`; returns whether there may be more to read now. At EOF (or on
  // an error) flushes the partial line and marks it; `close_at_eof` also closes the fd.
  bool Drain(Source& source, bool close_at_eof) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sources_mu_);
  // Reads until the pipe is empty (at most kFinalDrainReads times).
  void DrainAll(Source& source, bool close_at_eof) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sources_mu_);
  void Close(Source& source) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sources_mu_);

  OutputWriter* const writer_;
  int wake_fd_ = -1;  // eventfd: Finish() wakes the thread's poll()
  std::thread thread_;
  bool finished_ = false;

  // Held while reading a pipe and writing what came of it, never while blocked in poll().
  // The vector does not change size after Start(), so pointers into it stay valid.
  absl::Mutex sources_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<Source> sources_ ABSL_GUARDED_BY(sources_mu_);

  absl::Mutex mu_;
  absl::Time stop_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_OUTPUT_RELAY_H_
