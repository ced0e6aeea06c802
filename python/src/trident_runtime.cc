// trident_runtime.cc: the runtime, the resilient loop and the checkpoint engine for Python
// (trident._C.Runtime, run_resilient, CheckpointEngine); trident.torch wraps them
// (python/trident/resilient.py).
//
// The resilient loop is trident::RunResilient itself, with a Trainable whose methods call
// back into a Python adapter (resilient.py's _Adapter): the fault-tolerant policy (which
// errors a new epoch cures, agreeing on the step, peer replicas, checkpoints, rollback) stays
// in C++, one copy for every language. Each epoch's torch process group is a communicator
// that Bind splits from the runtime's world and hands to the c10d backend through the
// pending-group slot (internal.h), so the runtime's watcher aborts it with the world.
//
// Threads and the GIL: RunResilient and Runtime::Init run with the GIL released (a spare
// blocks in Init for as long as the job runs); each callback into Python takes it again.
// RunResilient calls the Trainable on the calling thread only.
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/python.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "internal.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/failure.h"
#include "trident/resilient.h"
#include "trident/runtime.h"
#include "trident/store.h"

namespace trident_torch {
namespace {

namespace py = pybind11;

[[noreturn]] void Raise(const absl::Status& s, const std::string& where) {
  throw std::runtime_error(absl::StrCat("trident: ", where, ": ", s.ToString()));
}

// A trident::Tensor view of a contiguous CPU torch tensor (shape kept).
absl::StatusOr<trident::Tensor> View(const std::string& name, const at::Tensor& t) {
  if (!t.device().is_cpu() || !t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state tensor '", name, "' must be a contiguous CPU tensor (is ", t.device().str(),
        t.is_contiguous() ? "" : ", not contiguous", ")"));
  }
  absl::StatusOr<trident::DType> d = ToDType(t.scalar_type());
  if (!d.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("state tensor '", name, "': ", d.status().message()));
  }
  trident::Tensor::Shape shape(t.sizes().begin(), t.sizes().end());
  return trident::Tensor(t.data_ptr(), *d, shape);
}

// Runs `f` (Python code) with the GIL; a Python exception becomes a status: the Trident
// status of the op that failed inside it when there was one (so the loop judges it by its
// code), else kInternal with the exception's text (no recovery cures a bug in the step).
template <typename F>
absl::Status CallPython(const char* what, F&& f) {
  py::gil_scoped_acquire gil;
  try {
    f();
    return absl::OkStatus();
  } catch (py::error_already_set& e) {
    absl::Status op = TakeLastOpError();
    if (!op.ok()) return op;
    return absl::InternalError(absl::StrCat("the training script's ", what, " raised ", e.what()));
  } catch (const std::exception& e) {
    absl::Status op = TakeLastOpError();
    if (!op.ok()) return op;
    return absl::InternalError(absl::StrCat("the training script's ", what, " raised ", e.what()));
  }
}

// Calls an observer; an exception in it is reported as unraisable (the loop goes on).
template <typename F>
void Observe(const char* what, F&& f) {
  py::gil_scoped_acquire gil;
  try {
    f();
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable(what);
  } catch (const std::exception& e) {
    PyErr_WarnEx(PyExc_RuntimeWarning, absl::StrCat(what, ": ", e.what()).c_str(), 1);
  }
}

// The Trainable over the Python adapter. The adapter provides:
//   _bind(epoch, fresh, rank, size)  rebuild the process group (and the user's on_bind)
//   _step(step) -> float            run step `step`, return its loss
//   _tensors() -> [(name, Tensor)]  the state to save (contiguous CPU tensors)
//   _restore_buffers() -> [(name, Tensor)]  buffers to restore into (same names and shapes)
//   _restored(step)                 the buffers are filled: load them into the state
//   _reset()                        the initial state
class PyTrainable : public trident::Trainable {
 public:
  explicit PyTrainable(py::object adapter) : adapter_(std::move(adapter)) {}
  ~PyTrainable() override {
    py::gil_scoped_acquire gil;
    held_.clear();
    adapter_ = py::object();
  }

  absl::Status Bind(trident::Communicator& world, const trident::BindInfo& info) override {
    // The torch group of this epoch: a communicator of its own (the loop's agreement and the
    // checkpoint engine use the world and another split), aborted with the world.
    absl::StatusOr<std::unique_ptr<trident::Communicator>> group =
        world.Split(0, world.rank());
    if (!group.ok()) return group.status();
    trident::Communicator* raw = group->get();
    SetPendingGroup(*std::move(group));
    group_ = nullptr;
    absl::Status s = CallPython("bind", [&] {
      adapter_.attr("_bind")(info.epoch, info.fresh, world.rank(), world.size());
    });
    if (TakePendingGroup() != nullptr && s.ok()) {
      s = absl::FailedPreconditionError(
          "bind: the adapter did not create a trident process group (init_process_group)");
    }
    if (s.ok()) group_ = raw;
    return s;
  }

  std::vector<trident::Communicator*> Groups() override {
    if (group_ == nullptr) return {};
    return {group_};
  }

  absl::Status Step() override {
    if (!deferred_.ok()) return deferred_;  // sticky: this rank's state cannot be trusted
    TakeLastOpError().IgnoreError();  // a late error of an earlier epoch's op
    double loss = 0;
    absl::Status s = CallPython("step", [&] {
      loss = adapter_.attr("_step")(step_ + 1).cast<double>();
    });
    if (!s.ok()) return s;
    ++step_;
    last_loss_ = loss;
    return absl::OkStatus();
  }

  int64_t step() const override { return step_; }

  trident::CheckpointState SaveState() override {
    trident::CheckpointState state;
    // The adapter checks the state up front (resilient.py); should reading it fail here
    // anyway, the next step fails with why (Trainable's methods other than Step and Bind
    // cannot return an error).
    Defer("state_dict (for a checkpoint)", Tensors("_tensors", &state.tensors));
    return state;
  }

  std::vector<trident::TensorRequest> RestoreRequests() override {
    std::vector<trident::NamedTensor> named;
    std::vector<trident::TensorRequest> out;
    if (absl::Status s = Tensors("_restore_buffers", &named); !s.ok()) {
      Defer("state_dict (for a restore)", s);
      return out;
    }
    for (auto& n : named) {
      trident::TensorRequest r;
      r.name = n.name;
      r.tensor = n.tensor;
      r.global_shape = n.tensor.shape();
      out.push_back(std::move(r));
    }
    return out;
  }

  void SetRestoredStep(int64_t step) override {
    step_ = step;
    Defer("load_state_dict", CallPython("load_state_dict", [&] { adapter_.attr("_restored")(step); }));
  }

  void ResetToInitialState() override {
    step_ = 0;
    Defer("reset", CallPython("reset", [&] { adapter_.attr("_reset")(); }));
  }

  double last_loss() const { return last_loss_; }

 private:
  // The adapter's (name, tensor) list as views; the tensors are held until the next call.
  absl::Status Tensors(const char* method, std::vector<trident::NamedTensor>* out) {
    py::gil_scoped_acquire gil;
    held_.clear();
    try {
      py::list items = adapter_.attr(method)();
      for (py::handle item : items) {
        // (name, tensor, replica_index, replica_count): a data-parallel state is the same on
        // every rank and declared as replicas, so a checkpoint writes it once.
        auto t = item.cast<std::tuple<std::string, at::Tensor, int, int>>();
        absl::StatusOr<trident::Tensor> v = View(std::get<0>(t), std::get<1>(t));
        if (!v.ok()) return v.status();
        held_.push_back(std::get<1>(t));
        trident::TensorPlacement placement;
        placement.replica_index = std::get<2>(t);
        placement.replica_count = std::get<3>(t);
        out->push_back({std::get<0>(t), *v, placement});
      }
    } catch (py::error_already_set& e) {
      return absl::InternalError(absl::StrCat(method, " raised ", e.what()));
    } catch (const std::exception& e) {  // e.g. py::cast_error: not (name, tensor, int, int)
      return absl::InternalError(absl::StrCat(method, ": ", e.what()));
    }
    return absl::OkStatus();
  }

  // A failure of a method that cannot return one: kept for the next Step, never lost.
  void Defer(const char* what, const absl::Status& s) {
    if (s.ok() || !deferred_.ok()) return;
    deferred_ = absl::InternalError(absl::StrCat(what, " failed, so this rank's state is not "
                                                 "the job's: ", s.message()));
  }

  py::object adapter_;
  absl::Status deferred_;
  std::vector<at::Tensor> held_;
  trident::Communicator* group_ = nullptr;  // owned by the epoch's c10d backend
  int64_t step_ = 0;
  double last_loss_ = 0;
};

py::dict ReportDict(const trident::RecoveryReport& r) {
  py::dict d;
  d["epoch"] = r.epoch;
  d["rank"] = r.failed.rank;
  d["member"] = r.failed.member;
  d["cause"] = r.failed.ShortCause();
  d["kind"] = std::string(trident::FailureKindName(r.failed.kind));
  d["detail"] = r.failed.cause;
  d["world_size"] = r.world_size;
  d["resume_step"] = r.resume_step;
  d["steps_redone"] = r.steps_redone;
  d["source"] = r.source;
  d["peer_bytes"] = r.peer_bytes;
  d["peer_ms"] = r.peer_ms;
  d["detect_ms"] = r.detect_ms;
  d["recover_ms"] = r.recover_ms;
  d["skipped_checkpoints"] = r.skipped_checkpoints;
  return d;
}

py::dict StatsDict(const trident::SaveStats& s) {
  py::dict d;
  d["step"] = s.step;
  d["snapshot_seconds"] = s.snapshot_seconds;
  d["persist_seconds"] = s.persist_seconds;
  d["staged_bytes"] = s.staged_bytes;
  d["staging_bytes"] = s.staging_bytes;
  d["written_bytes"] = s.written_bytes;
  d["streamed"] = s.streamed;
  return d;
}

// Python's handle of one save.
struct PySave {
  std::shared_ptr<trident::CheckpointSave> save;
};

// Python's checkpoint engine, with the communicator it owns.
struct PyEngine {
  std::unique_ptr<trident::CheckpointEngine> engine;
};

}  // namespace

void RegisterRuntime(py::module_& m) {
  py::class_<trident::Runtime>(m, "Runtime",
                               "This process's place in a fault-tolerant job (trident/runtime.h).")
      .def_property_readonly("rank", &trident::Runtime::rank)
      .def_property_readonly("world_size", &trident::Runtime::world_size)
      .def_property_readonly("epoch", &trident::Runtime::epoch)
      .def_property_readonly("member", &trident::Runtime::member)
      .def_property_readonly("in_job", &trident::Runtime::in_job)
      .def_property_readonly("promoted", &trident::Runtime::promoted)
      .def("finish", &trident::Runtime::Finish, py::call_guard<py::gil_scoped_release>(),
           "This rank is done: stops the heartbeat and the watcher.");

  m.def(
      "init_runtime",
      [](double timeout_s) -> std::unique_ptr<trident::Runtime> {
        trident::RuntimeOptions options;
        if (timeout_s > 0) options.timeout = absl::Seconds(timeout_s);
        absl::StatusOr<std::unique_ptr<trident::Runtime>> rt;
        {
          py::gil_scoped_release release;
          rt = trident::Runtime::Init(std::move(options));
        }
        if (absl::IsCancelled(rt.status())) return nullptr;
        if (!rt.ok()) Raise(rt.status(), "init_runtime");
        return *std::move(rt);
      },
      py::arg("timeout_s") = 0.0,
      "Runtime::Init: joins the job (a spare blocks here until promoted). None: a spare that "
      "was not needed (exit 0). Raises RuntimeError with Trident's status otherwise.");

  m.def(
      "run_resilient",
      [](trident::Runtime& rt, py::object adapter, int64_t steps, std::string ckpt_dir,
         int ckpt_every, int keep, bool peer_replicas, bool resume, double recover_timeout_s,
         py::object on_step, py::object on_recovery, py::object on_save,
         py::object before_step) -> bool {
        PyTrainable trainer(adapter);
        trident::LoopOptions o;
        o.steps = steps;
        o.ckpt_dir = std::move(ckpt_dir);
        o.ckpt_every = ckpt_every;
        o.keep = keep;
        o.peer_replicas = peer_replicas;
        o.resume = resume;
        o.recover_timeout = absl::Seconds(recover_timeout_s);
        if (!on_step.is_none()) {
          o.on_step = [&](int64_t step, int64_t since_verdict_ms) {
            Observe("on_step", [&] { on_step(step, trainer.last_loss(), since_verdict_ms); });
          };
        }
        if (!on_recovery.is_none()) {
          o.on_recovery = [&](const trident::RecoveryReport& r) {
            Observe("on_recovery", [&] { on_recovery(ReportDict(r)); });
          };
        }
        if (!on_save.is_none()) {
          o.on_save = [&](const trident::SaveEvent& e) {
            Observe("on_save", [&] {
              py::dict d;
              d["step"] = e.step;
              d["committed"] = e.committed;
              d["status"] = e.status.ToString();
              d["stall_ms"] = e.stall_ms;
              d["persist_ms"] = e.persist_ms;
              d["bytes"] = e.bytes;
              on_save(d);
            });
          };
        }
        if (!before_step.is_none()) {
          o.before_step = [&](int64_t next) { Observe("before_step", [&] { before_step(next); }); };
        }
        absl::Status s;
        {
          py::gil_scoped_release release;
          s = trident::RunResilient(rt, trainer, o);
          rt.SetGroups({});  // the epoch's group dies with its process group, in Python
        }
        if (absl::IsCancelled(s)) return false;
        if (!s.ok()) Raise(s, "run_resilient");
        return true;
      },
      py::arg("runtime"), py::arg("adapter"), py::arg("steps"), py::arg("ckpt_dir") = "",
      py::arg("ckpt_every") = 0, py::arg("keep") = 3, py::arg("peer_replicas") = true,
      py::arg("resume") = false, py::arg("recover_timeout_s") = 60.0,
      py::arg("on_step") = py::none(), py::arg("on_recovery") = py::none(),
      py::arg("on_save") = py::none(), py::arg("before_step") = py::none(),
      "trident::RunResilient over a Python adapter (use trident.torch.run_resilient).");

  py::class_<PySave>(m, "CheckpointSave", "One save of CheckpointEngine.save.")
      .def_property_readonly("step", [](const PySave& s) { return s.save->step(); })
      .def_property_readonly("done", [](const PySave& s) { return s.save->IsCompleted(); })
      .def(
          "wait",
          [](const PySave& s, double timeout_s) {
            absl::Status st;
            {
              py::gil_scoped_release release;
              st = s.save->Wait(timeout_s > 0 ? absl::Now() + absl::Seconds(timeout_s)
                                              : absl::InfiniteFuture());
            }
            if (!st.ok()) Raise(st, absl::StrCat("checkpoint save of step ", s.save->step()));
          },
          py::arg("timeout_s") = 0.0,
          "Blocks until the save is committed (returns) or failed (raises RuntimeError with "
          "Trident's status), or timeout_s passes (raises, DEADLINE_EXCEEDED; the save goes "
          "on). 0: no timeout.")
      .def("stats", [](const PySave& s) { return StatsDict(s.save->stats()); },
           "snapshot_seconds, persist_seconds, staged_bytes, staging_bytes, written_bytes, "
           "streamed.");

  py::class_<PyEngine>(m, "CheckpointEngine",
                       "Trident's asynchronous checkpoint engine (trident/checkpoint.h).")
      .def(py::init([](std::string dir, py::object backend, int keep_last, bool peer_replicas,
                       int64_t reserve_bytes, int copy_threads) {
             std::unique_ptr<trident::Communicator> comm;
             if (!backend.is_none()) {
               auto b = backend.cast<c10::intrusive_ptr<c10d::Backend>>();
               trident::Communicator* c = BackendCommunicator(b);
               if (c == nullptr) {
                 throw std::invalid_argument(
                     "trident: CheckpointEngine needs a process group of backend 'trident'");
               }
               py::gil_scoped_release release;
               absl::StatusOr<std::unique_ptr<trident::Communicator>> split =
                   c->Split(0, c->rank());
               if (!split.ok()) Raise(split.status(), "CheckpointEngine: splitting the group");
               comm = *std::move(split);
             } else {
               trident::HostCommOptions ho;
               ho.rank = 0;
               ho.world_size = 1;
               ho.store = trident::NewMemoryStore();
               ho.name = "ckpt";
               py::gil_scoped_release release;
               absl::StatusOr<std::unique_ptr<trident::Communicator>> one =
                   trident::CreateHostCommunicator(std::move(ho));
               if (!one.ok()) Raise(one.status(), "CheckpointEngine: a world of one");
               comm = *std::move(one);
             }
             trident::CheckpointOptions o;
             o.dir = std::move(dir);
             o.comm = std::shared_ptr<trident::Communicator>(std::move(comm));
             o.keep_last = keep_last;
             o.peer_replicas = peer_replicas;
             o.reserve_bytes = static_cast<size_t>(std::max<int64_t>(reserve_bytes, 0));
             o.copy_threads = copy_threads;
             absl::StatusOr<std::unique_ptr<trident::CheckpointEngine>> e;
             {
               py::gil_scoped_release release;
               e = trident::CheckpointEngine::Create(std::move(o));
             }
             if (!e.ok()) Raise(e.status(), "CheckpointEngine");
             auto out = std::make_unique<PyEngine>();
             out->engine = *std::move(e);
             return out;
           }),
           py::arg("dir"), py::arg("backend") = py::none(), py::arg("keep_last") = 0,
           py::arg("peer_replicas") = false, py::arg("reserve_bytes") = 0,
           py::arg("copy_threads") = 0,
           "Creates the engine (collective over the group's ranks when `backend` is given; "
           "else this process alone).")
      .def(
          "save",
          [](PyEngine& pe, int64_t step, const std::vector<std::pair<std::string, at::Tensor>>& ts,
             py::bytes metadata) {
            if (pe.engine == nullptr) {
              throw std::runtime_error("trident: save: the CheckpointEngine was closed");
            }
            trident::CheckpointState state;
            state.metadata = std::string(metadata);
            for (const auto& [name, t] : ts) {
              absl::StatusOr<trident::Tensor> v = View(name, t);
              if (!v.ok()) throw std::invalid_argument(absl::StrCat("trident: save: ", v.status().message()));
              state.tensors.push_back({name, *v, {}});
            }
            absl::StatusOr<std::shared_ptr<trident::CheckpointSave>> save;
            {
              py::gil_scoped_release release;
              save = pe.engine->Save(step, state);
            }
            if (!save.ok()) Raise(save.status(), absl::StrCat("checkpoint save of step ", step));
            return PySave{*std::move(save)};
          },
          py::arg("step"), py::arg("tensors"), py::arg("metadata") = py::bytes(),
          "Snapshots the tensors (contiguous CPU tensors of Trident's dtypes) and returns once "
          "they are copied into staging memory; writing and the commit go on in the background "
          "(CheckpointSave.wait). The tensors may change as soon as save returns.")
      .def(
          "close",
          [](PyEngine& pe) {
            py::gil_scoped_release release;
            pe.engine.reset();
          },
          "Waits for the save in flight and stops the engine's threads.");
}

}  // namespace trident_torch
