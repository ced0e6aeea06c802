// internal.h: what the two halves of the module trident._C share: the c10d backend
// (trident_backend.cc) and the runtime, resilient loop and checkpoint bindings
// (trident_runtime.cc). Not installed; nothing here is part of any API.
#ifndef TRIDENT_PYTHON_INTERNAL_H_
#define TRIDENT_PYTHON_INTERNAL_H_

#include <pybind11/pybind11.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trident/communicator.h"
#include "trident/tensor.h"

namespace trident_torch {

// The communicator that the next create_backend call adopts instead of building one through
// torch's store (the resilient loop's group of the epoch). One slot per process.
void SetPendingGroup(std::unique_ptr<trident::Communicator> comm);
std::unique_ptr<trident::Communicator> TakePendingGroup();

// The Trident status of the first op that failed since the last TakeLastOpError (OK: none),
// so that a step that raised a DistBackendError is judged by its status code, not its text.
void RecordOpError(const absl::Status& status);
absl::Status TakeLastOpError();

// The communicator of a trident backend; nullptr for another backend.
trident::Communicator* BackendCommunicator(const c10::intrusive_ptr<c10d::Backend>& backend);

absl::StatusOr<trident::DType> ToDType(at::ScalarType t);

// Adds Runtime, run_resilient and CheckpointEngine to the module.
void RegisterRuntime(pybind11::module_& m);

}  // namespace trident_torch

#endif  // TRIDENT_PYTHON_INTERNAL_H_
