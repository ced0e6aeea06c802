// Relays the children's stdout and stderr to trident-run's own, one whole line at a time,
// each line prefixed with the rank that printed it ("[rank 3] ...").
//
// OutputWriter serializes every write to trident-run's stdout and stderr (the relay's and the
// launcher's own messages), so lines never interleave mid-line. LineSplitter turns a byte
// stream into prefixed lines. OutputRelay is one thread that poll()s every child pipe.
//
//   OutputWriter writer(STDOUT_FILENO, STDERR_FILENO);
//   OutputRelay relay(&writer);
//   relay.Add(stdout_pipe_read_end, "[rank 0] ", Stream::kStdout);
//   relay.Start();
//   ...  // children run and exit
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
  // Only before Start().
  void Add(int fd, std::string prefix, Stream stream);
  // Starts the relay thread.
  void Start();
  // Waits until every pipe reached EOF or `deadline` passed (a grandchild may hold a pipe
  // open forever), then reads what is left without blocking, flushes partial lines, closes
  // the pipes and joins the thread. Idempotent.
  void Finish(absl::Time deadline);

 private:
  struct Source {
    int fd;
    Stream stream;
    LineSplitter splitter;
  };

  void Loop();
  // Reads what `source` has now; returns false at EOF or on an error.
  bool Drain(Source& source);
  void Close(Source& source);

  OutputWriter* const writer_;
  std::vector<Source> sources_;  // owned by the relay thread once started
  int wake_fd_ = -1;             // eventfd: Finish() wakes the thread's poll()
  std::thread thread_;
  bool finished_ = false;

  absl::Mutex mu_;
  absl::Time stop_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_OUTPUT_RELAY_H_
