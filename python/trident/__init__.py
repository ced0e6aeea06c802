"""Trident for Python: the c10d backend "trident" for torch.distributed.

``import trident.torch`` registers the backend; then
``torch.distributed.init_process_group("trident")`` builds a Trident communicator for the
default group (and one for every ``new_group``). See docs/frameworks.md.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
